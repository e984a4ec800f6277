"""Stage `local_model`: a model in a local folder, fingerprinted file by file, so that its weights are data.

Usage: python -m stages.local_model --model olmoe --out data/models/olmoe
For each name in params `local_models` (its `models.<name>.path` a saved model folder): writes
<out>/routelab_ref.json with the spec and the sha256 of every file in the folder (weights, config,
tokenizer). DVC runs this stage on every `dvc repro` (always_changed: the folder is outside the
pipeline's deps), and the file's bytes change exactly when a file of the folder does, so an
in-place edit of a weight re-runs that model's stages and nothing else. Hashes are cached by
(size, mtime) in .dvc/tmp/routelab_hashes.json: an unchanged 60 GB folder costs a stat per file.
"""

from dataclasses import asdict

from routelab.config import load_params
from routelab.io import write_json
from routelab.models import fingerprint_folder, model_spec
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--out", output_dirs=("--out",))
    spec = model_spec(load_params(args.params), args.model)
    files = fingerprint_folder(spec.path, setting=f"models.{args.model}.path")
    write_json(f"{args.out}/routelab_ref.json", {"spec": asdict(spec), "files": files})
    return f"local_model[{args.model}]: {len(files)} files of {spec.path} fingerprinted in {args.out}"


if __name__ == "__main__":
    run_stage(main, "local_model")
