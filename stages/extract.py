"""Stage `extract`: routing of every prompt at every MoE layer → data/routing/<model>.parquet.

Usage: python -m stages.extract --model testbed --prompts data/prompts/testbed.parquet \
           --out data/routing/testbed.parquet --metrics metrics/testbed/extract.json
"""

from routelab.config import load_params, section
from routelab.extract import ExtractParams, extract_routing
from routelab.tables import read_prompt_texts
from routelab.io import write_json
from routelab.models import load_model, model_spec
from routelab.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, "--model", "--prompts", "--out", "--metrics")
    params = load_params(args.params)
    cfg = section(ExtractParams, params.get("extract"), "extract")
    spec = model_spec(params, args.model)
    lm = load_model(spec)
    summary = extract_routing(lm, read_prompt_texts(args.prompts), args.out, batch_size=spec.batch_size,
                              chunk_size=cfg.chunk_size, max_length=cfg.max_length, model_name=args.model)
    summary["bytes_per_token_layer"] = summary["bytes"] / max(summary["rows"], 1)
    for volatile in ("seconds", "tokens_computed"):  # the same params must give the same metrics
        summary.pop(volatile)
    write_json(args.metrics, summary)
    print(f"extract[{args.model}]: {summary['prompts']} prompts, {summary['tokens']} tokens × "
          f"{len(lm.moe_layers)} MoE layers → {args.out} ({summary['bytes'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_stage(main)
