"""Stage `aals`: each MoE layer alone under ARR at λ_probe on the validation split; R(l) (FARE Eq. 5) selects layers.

Usage: python -m stages.aals --model diffuse --profile data/profiles/diffuse.parquet \
           --splits data/bench/diffuse/splits --baseline data/bench/diffuse/baseline \
           --out data/interventions/diffuse/aals --metrics metrics/diffuse/aals.json --plots plots/models/diffuse/aals
"""

from routelab.aals import STAGE
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(STAGE, __doc__)
