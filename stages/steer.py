"""Stage `steer`: SteerMoE detection on paired inputs, then the steering evaluated as a condition (test split).

Usage: python -m stages.steer --model diffuse --prompts data/prompts/diffuse.parquet \
           --profile data/profiles/diffuse.parquet --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/steer \
           --metrics metrics/diffuse/steer.json
Writes <out>/pairs_routing.parquet (the pairs' routing log), <out>/delta.parquet (Δ per expert),
<out>/steering.parquet (A+/A− with its provenance) and the condition's per-item tables.
"""

from routelab.steer import STAGE
from routelab.interventions import run_intervention

if __name__ == "__main__":
    run_intervention(STAGE, __doc__)
