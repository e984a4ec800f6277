"""Stage `ablation`: ARR at λ = `ablation.lam` with ablated profiles on the AALS layers, test split (FARE Table 4).

Usage: python -m stages.ablation --model diffuse --profile data/profiles/diffuse.parquet \
           --aals metrics/diffuse/aals.json --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/ablation \
           --metrics metrics/diffuse/ablation.json --plots plots/models/diffuse/ablation
"""

from routelab.ablation import STAGE
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(STAGE, __doc__)
