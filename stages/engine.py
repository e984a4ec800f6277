"""Stage `engine`: a fingerprint of the conditions engine, the library modules every condition-scoring stage imports.

Usage: python -m stages.engine --out data/engine.json
The eight stages that score conditions (aals, arr_sweep, arr_eval, masking, ablation, alternatives,
steer, generation) import routelab.interventions and everything below it. DVC cannot put a list
into a stage's deps (it refuses with "Cannot interpolate data of type 'list'"), so this stage's
deps list those modules once, and it writes their sha256 to --out: the eight depend on that file,
whose bytes change exactly when one of the modules does. tests/test_project_consistency.py checks
that its deps are exactly the import closure of routelab.interventions.
"""

import hashlib
from pathlib import Path

import yaml

from routelab.io import write_json
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--out", outputs=("--out",))
    deps = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["engine"]["deps"]
    files = sorted(f for d in deps if d != "stages/engine.py" for f in _files(Path(d)))
    write_json(args.out, {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return f"engine: {len(files)} modules fingerprinted -> {args.out}"


def _files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


if __name__ == "__main__":
    run_stage(main, "engine")
