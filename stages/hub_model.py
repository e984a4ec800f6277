"""Stage `hub_model`: pin a Hub model's spec in data/models/<name>/ so later stages can depend on it.

Usage: python -m stages.hub_model --model olmoe --out data/models/olmoe
No download happens here (the first stage that loads the model fetches it); the folder
holds routelab_ref.json, whose content changes exactly when the model's spec does, so
DVC re-runs a real model's stages on a change of path, revision or dtype, and only then.
"""

import json
from dataclasses import asdict

from routelab.config import load_params
from routelab.io import write_text
from routelab.models import model_spec
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--out", output_dirs=("--out",))
    spec = model_spec(load_params(args.params), args.model)
    write_text(f"{args.out}/routelab_ref.json", json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")
    return f"hub_model[{args.model}]: {spec.path} (revision {spec.revision or 'main'}) pinned in {args.out}"


if __name__ == "__main__":
    run_stage(main, "hub_model")
