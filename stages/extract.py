"""Stage `extract`: routing of every prompt at every MoE layer → data/routing/<model>.parquet.

Usage: python -m stages.extract --model diffuse --prompts data/prompts/diffuse.parquet \
           --out data/routing/diffuse.parquet --metrics metrics/diffuse/extract.json
"""

from routelab.config import load_params, section
from routelab.extract import ExtractParams, extract_routing
from routelab.io import check_resumable_output
from routelab.models import load_model, model_spec
from routelab.stage import run_stage, stage_args, write_metrics
from routelab.tables import read_prompt_texts


def main() -> str:
    args = stage_args(__doc__, "--model", "--prompts", "--out", "--metrics", outputs=("--metrics",))
    params = load_params(args.params)
    cfg = section(ExtractParams, params.get("extract"), "extract")
    spec = model_spec(params, args.model)
    check_resumable_output(args.out, "--out")  # also refuses an <out>.parts/ that routelab did not make
    prompts = read_prompt_texts(args.prompts)  # bad input fails before the model loads
    lm = load_model(spec)
    summary = extract_routing(lm, prompts, args.out, batch_size=spec.batch_size, chunk_size=cfg.chunk_size,
                              max_length=cfg.max_length, model_name=args.model)
    truncated = summary.pop("truncated")
    summary["bytes_per_token_layer"] = summary["bytes"] / max(summary["rows"], 1)
    for volatile in ("seconds", "tokens_computed"):  # the same params must give the same metrics
        summary.pop(volatile)
    write_metrics(args.metrics, summary)
    note = f"; {truncated} of {len(prompts)} prompts cut to extract.max_length {cfg.max_length}" if truncated else ""
    return (f"extract[{args.model}]: {summary['prompts']} prompts, {summary['tokens']} tokens × "
            f"{len(lm.moe_layers)} MoE layers → {args.out}, {summary['bytes'] / 1e6:.2f} MB{note}")


if __name__ == "__main__":
    run_stage(main, "extract")
