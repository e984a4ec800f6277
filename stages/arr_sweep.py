"""Stage `arr_sweep`: ARR at every λ of `arr.lambdas` on the AALS layers (validation split); λ* by FARE Eq. 7.

Usage: python -m stages.arr_sweep --model diffuse --profile data/profiles/diffuse.parquet \
           --aals metrics/diffuse/aals.json --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/arr_sweep \
           --metrics metrics/diffuse/arr_sweep.json --plots plots/models/diffuse/arr_sweep
"""

from routelab.arr import SWEEP
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(SWEEP, __doc__)
