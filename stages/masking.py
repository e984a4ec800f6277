"""Stage `masking`: top-n, bottom-n and random-n experts by φ switched off, test split (FARE Table 2).

Usage: python -m stages.masking --model diffuse --profile data/profiles/diffuse.parquet \
           --splits data/bench/diffuse/splits --baseline data/bench/diffuse/baseline \
           --aals metrics/diffuse/aals.json --out data/interventions/diffuse/masking --metrics metrics/diffuse/masking.json \
           --plots plots/models/diffuse/masking
"""

from routelab.masking import STAGE
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(STAGE, __doc__)
