"""Stage `arr_eval`: baseline vs ARR at λ* on the test split, every enabled benchmark (FARE Table 6).

Usage: python -m stages.arr_eval --model diffuse --profile data/profiles/diffuse.parquet \
           --sweep metrics/diffuse/arr_sweep.json --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/arr_eval \
           --metrics metrics/diffuse/arr_eval.json
"""

from routelab.arr import EVAL
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(EVAL, __doc__)
