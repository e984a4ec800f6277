"""The ``routelab`` command: the library's main jobs without DVC.

    routelab extract --model <hub-id-or-dir> --prompts <txt-or-parquet> --out <file.parquet>
                     [--profile <profile.parquet> --lam <λ>]
    routelab bench --model <hub-id-or-dir> --benchmark <name> [--data <path>] --out <metrics.json>
                   [--items <items.parquet>] [--profile <profile.parquet> --lam <λ>]
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from routelab.errors import RoutelabError

console = Console(stderr=True, soft_wrap=True)  # errors stay on one greppable line


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hub id or local model directory")
    p.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--device-map", default=None, help='e.g. "auto" to shard over several GPUs')
    p.add_argument("--trust-remote-code", action="store_true", help="needed for DeepSeekMoE-16B")
    p.add_argument("--batch-size", type=int, default=16)


def _spec(args):
    from routelab.models import ModelSpec

    return ModelSpec(path=args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                     trust_remote_code=args.trust_remote_code, batch_size=args.batch_size)


def _check_arr_args(args) -> None:
    if (args.profile is None) != (args.lam is None):
        raise RoutelabError("--profile and --lam go together (ARR: softmax(z − λ·φ) before top-k)")
    if args.layers is not None and not args.layers:
        raise RoutelabError("--layers needs at least one layer index (omit it to edit every profile layer)")


def cmd_extract(args) -> None:
    from routelab.extract import extract_routing
    from routelab.tables import read_prompt_texts
    from routelab.models import load_model
    from routelab.routing import RoutingEdit

    _check_arr_args(args)
    prompts = read_prompt_texts(args.prompts)
    lm = load_model(_spec(args))
    edit = RoutingEdit.arr(args.profile, args.lam, args.layers) if args.profile else None
    summary = extract_routing(lm, prompts, args.out, edit=edit, batch_size=args.batch_size,
                              chunk_size=args.chunk_size, model_name=args.model)
    console.print(
        f"extract: {summary['prompts']} prompts, {summary['tokens']} tokens × {len(lm.moe_layers)} MoE layers "
        f"→ {args.out} ({summary['bytes'] / 1e6:.2f} MB, {summary['seconds']:.1f} s)"
    )


def cmd_bench(args) -> None:
    # Imported per command, as every command here does: `routelab --help` loads no torch/datasets.
    from routelab.benchmarks import get_benchmark, load_items, resolve_source, run_benchmark
    from routelab.benchmarks.base import source_label
    from routelab.io import write_json, write_parquet
    from routelab.models import load_model
    from routelab.routing import RoutingEdit, attach

    bench = get_benchmark(args.benchmark)  # unknown name → "Did you mean …" before loading a model
    if not bench.scored:
        raise RoutelabError(f"--benchmark {bench.name} is a {bench.output} benchmark, not scored by log-likelihood yet")
    _check_arr_args(args)
    source = resolve_source(bench, args.data, args.hub)
    items = load_items(bench, source, primer_path=args.primer)  # a missing input fails before the model loads
    lm = load_model(_spec(args))
    edit = RoutingEdit.arr(args.profile, args.lam, args.layers) if args.profile else None
    with attach(lm, edit=edit):
        metrics, rows = run_benchmark(lm.model, lm.tokenizer, bench, items=items, batch_size=args.batch_size,
                                      seed=args.seed)
    metrics["source"] = source_label(source)
    metrics["model"] = args.model
    metrics["edit"] = edit.description if edit else None
    write_json(args.out, metrics)
    if args.items:
        write_parquet(rows, args.items)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    console.print(f"bench {bench.name}: {rows.height} items; " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
                  + f" → {args.out}", markup=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routelab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract", help="record router logits and top-k of every MoE layer to Parquet")
    _model_args(p)
    p.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .parquet (prompt_id, text)")
    p.add_argument("--out", required=True, help="output .parquet")
    p.add_argument("--profile", default=None, help="profile Parquet (layer, expert, phi): record under ARR")
    p.add_argument("--lam", type=float, default=None, help="ARR strength λ")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="ARR layers (default: all profile layers)")
    p.add_argument("--chunk-size", type=int, default=512, help="prompts per resumable shard")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("bench", help="score one benchmark by log-likelihood (optionally under ARR)")
    _model_args(p)
    p.add_argument("--benchmark", required=True, help="benchmark name, e.g. crows_pairs (an unknown name lists them all)")
    p.add_argument("--data", default=None,
                   help="local file/folder in the original format (default: its ../shared copy, else the Hub)")
    p.add_argument("--hub", action="store_true", help="load from the Hugging Face Hub even where a local copy exists")
    p.add_argument("--primer", default=None, help="TruthfulQA QA primer file (default: the shared qa_primer.txt)")
    p.add_argument("--out", required=True, help="metrics .json")
    p.add_argument("--items", default=None, help="per-item .parquet (one row per item: its LLs and scores)")
    p.add_argument("--profile", default=None, help="profile Parquet: score under ARR")
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--layers", type=int, nargs="*", default=None)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RoutelabError as exc:
        console.print(f"[bold red]routelab {args.command}: error:[/] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
