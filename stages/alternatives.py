"""Stage `alternatives`: FSP vs SAFEx-style and random selection (each at its own λ* on the AALS layers) and prompt debiasing (FARE Table 8).

Usage: python -m stages.alternatives --model diffuse --profile data/profiles/diffuse.parquet \
           --sweep metrics/diffuse/arr_sweep.json --safex data/selections/diffuse_safex.parquet \
           --splits data/bench/diffuse/splits --baseline data/bench/diffuse/baseline \
           --out data/interventions/diffuse/alternatives --metrics metrics/diffuse/alternatives.json \
           --plots plots/models/diffuse/alternatives
"""

from routelab.alternatives import STAGE
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(STAGE, __doc__)
