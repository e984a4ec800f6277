"""The ``routelab`` command: the library's main jobs without DVC.

    routelab extract --model <hub-id-or-dir> --prompts <txt-or-parquet> --out <file.parquet>
                     [--profile <profile.parquet> --lam <λ>] [--max-length N]
    routelab bench --model <hub-id-or-dir> --benchmark <name> [--data <path>] --out <metrics.json>
                   [--items <items.parquet>] [--profile <profile.parquet> --lam <λ>] [--max-logits-bytes N]
    routelab check-params [--params params.yaml] [--fast]
    routelab seeds [--models …] [--out docs/seeds.md]

Every input and output is checked before a model loads. Exit codes: 0 done; 2 bad input (one
line on stderr naming the input and what to do); 130 interrupted (one line saying what was kept).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

# Only modules that import no torch here: `routelab --help` and bad input answer at once.
from routelab.errors import RoutelabError
from routelab.io import atomic_paths, check_resumable_output, check_writable, json_text
from routelab.stage import EXIT_BAD_INPUT, EXIT_INTERRUPTED, OneLineParser, interrupted_line
from routelab.tables import load_profile, read_prompt_texts

COMMANDS = {  # name -> purpose: listed in `routelab --help`, one line each (argparse's own list wraps them)
    "extract": "record the router logits and top-k of every MoE layer, per token, to Parquet",
    "bench": "score one benchmark by log-likelihood, optionally under ARR",
    "check-params": "check every section and key of params.yaml, as the first DVC stage does",
    "seeds": "summarise the testbed seeds run as DVC experiments: numbers mean ± sd, verdicts k/n",
}
DESCRIPTION = "Record and score the routing of Mixture-of-Experts models without DVC.\n\ncommands:\n" + "\n".join(
    f"    {name:<12}  {purpose}" for name, purpose in COMMANDS.items()
)
EXAMPLES = """examples:
  routelab extract --model data/models/diffuse --prompts data/prompts/diffuse.parquet --out routing.parquet
  routelab extract --model data/models/diffuse --prompts data/prompts/diffuse.parquet --out arr.parquet \\
                   --profile data/profiles/diffuse.parquet --lam 1
  routelab bench --model data/models/diffuse --benchmark crows_pairs --out crows.json --items crows.parquet \\
                 --data data/testbed/stereotyped/crows_pairs/crows_pairs_anonymized.csv
The data/ paths are the `diffuse` testbed's, written by `dvc repro`; --model also takes a Hub id
(e.g. allenai/OLMoE-1B-7B-0924) with a profile and prompts of that model.

Run `routelab <command> --help` for a command's options and defaults."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default where it has one (not "None"), and descriptions and examples kept as
    written (the command list is part of the description: see COMMANDS)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=100)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved model's folder or a Hub id (owner/name)")
    p.add_argument("--dtype", default="auto",
                   help="float32 | bfloat16 | float16 | auto (bfloat16 on cuda, else float32)")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N | mps")
    p.add_argument("--device-map", default=None, help='e.g. "auto" to shard over several GPUs')
    p.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (DeepSeekMoE-16B)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="sequences per forward pass")


def _arr_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--profile", default=None, help=f"φ profile Parquet (the `profile` stage's): {what} under ARR")
    p.add_argument("--lam", type=float, default=None,
                   help="ARR strength λ in softmax(z − λ·φ): > 0 lowers the sensitive experts, 0 changes nothing")
    p.add_argument("--layers", type=int, nargs="*", default=None,
                   help="MoE layers ARR edits (default: every profile layer)")


def _spec(args):
    from routelab.models import ModelSpec

    spec = ModelSpec(path=args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                     trust_remote_code=args.trust_remote_code, batch_size=args.batch_size)
    return spec.from_source("cli").check()  # device, dtype: before the model loads


def _check_arr_args(args) -> None:
    if (args.profile is None) != (args.lam is None):
        raise RoutelabError(
            "--profile and --lam go together (ARR: softmax(z − λ·φ) before top-k); give both or neither")
    if args.lam is not None and not math.isfinite(args.lam):
        raise RoutelabError(f"--lam {args.lam}: λ must be a finite number, e.g. --lam 1 (0 leaves routing unchanged)")
    if args.layers is not None and not args.layers:
        raise RoutelabError("--layers needs at least one layer index (omit it to edit every profile layer)")
    if args.profile is not None:
        load_profile(args.profile)  # a missing or malformed profile is refused before the model loads
    if args.lam is not None and args.lam < 0:
        print(f"note: --lam {args.lam:g} is negative: it raises the logits of the most sensitive experts "
              f"(z + {-args.lam:g}·φ) instead of lowering them", file=sys.stderr)


def _check_profile_fits(args, lm) -> None:
    """A --profile of another model (other MoE layers or expert count) is refused, naming the file."""
    if args.profile is not None:
        load_profile(args.profile, num_experts=lm.num_experts, layers=lm.moe_layers)


def cmd_extract(args) -> None:
    _check_arr_args(args)
    check_resumable_output(args.out, "--out")
    prompts = read_prompt_texts(args.prompts)
    # Imported here, after the checks above: they need no torch, so bad input is refused in about
    # half a second, not after the ~5 s that torch and transformers take to import.
    from routelab.extract import extract_routing
    from routelab.models import load_model
    from routelab.routing import RoutingEdit

    spec = _spec(args)
    edit = RoutingEdit.arr(args.profile, args.lam, args.layers) if args.profile else None
    lm = load_model(spec)
    _check_profile_fits(args, lm)
    summary = extract_routing(lm, prompts, args.out, edit=edit, batch_size=args.batch_size, chunk_size=args.chunk_size,
                              max_length=args.max_length, model_name=args.model)
    n_cut = summary["truncated"]
    truncated = f"; {n_cut} of {len(prompts)} prompts truncated to {args.max_length} tokens" if n_cut else ""
    print(f"extract: {summary['prompts']} prompts, {summary['tokens']} tokens × {len(lm.moe_layers)} MoE layers "
          f"→ {args.out} ({summary['bytes'] / 1e6:.2f} MB, {summary['seconds']:.1f} s){truncated}")


def cmd_check_params(args) -> None:
    from routelab.params import check_params

    problems = check_params(args.params, fast=True) or check_params(args.params, fast=args.fast)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        sys.exit(EXIT_BAD_INPUT)
    print(f"{args.params}: every section and key is valid" + (" (keys only: --fast)" if args.fast else ""))


def cmd_seeds(args) -> None:
    import yaml

    from routelab.seeds import fill_readme, write_summary

    models = args.models or (yaml.safe_load(Path(args.params).read_text()).get("pipeline") or {}).get("models") or []
    data = write_summary(".", models, args.out)
    held = sum(v["held"] for m in data["verdicts"].values() for v in m.values())
    total = sum(v["of"] for m in data["verdicts"].values() for v in m.values())
    if args.readme:
        fill_readme(args.readme, data, models)
    print(f"seeds {data['seeds']}: {held}/{total} verdicts held → {args.out} (+ .json)"
          + (f", {args.readme}'s seeds table" if args.readme else ""))


def cmd_bench(args) -> None:
    _check_arr_args(args)
    check_writable(args.out, "--out")
    if args.items:
        check_writable(args.items, "--items")
        if Path(args.items).resolve() == Path(args.out).resolve():
            raise RoutelabError(f"--items {args.items} is the --out file: give them different paths")
    # Imported after the checks above, as in cmd_extract (the benchmarks import torch and datasets).
    from routelab.benchmarks import get_benchmark, load_items, resolve_source, run_benchmark
    from routelab.benchmarks.base import source_label
    from routelab.models import load_model
    from routelab.routing import RoutingEdit, attach
    from routelab.scoring import check_max_logits_bytes

    budget = check_max_logits_bytes(args.max_logits_bytes, "--max-logits-bytes")
    bench = get_benchmark(args.benchmark)  # unknown name → "Did you mean …" before loading a model
    if not bench.scored:
        raise RoutelabError(f"--benchmark {bench.name} is a {bench.output} benchmark, not scored by log-likelihood yet")
    spec = _spec(args)
    source = resolve_source(bench, args.data, args.hub)
    items = load_items(bench, source, primer_path=args.primer)  # a missing input fails before the model loads
    edit = RoutingEdit.arr(args.profile, args.lam, args.layers) if args.profile else None
    lm = load_model(spec)
    _check_profile_fits(args, lm)
    with attach(lm, edit=edit):
        metrics, rows = run_benchmark(lm.model, lm.tokenizer, bench, items=items, batch_size=args.batch_size,
                                      seed=args.seed, max_logits_bytes=budget)
    metrics["source"] = source_label(source)
    metrics["model"] = args.model
    metrics["edit"] = edit.description if edit else None
    targets = [args.out, *([args.items] if args.items else [])]
    with atomic_paths(*targets) as tmps:  # both outputs or neither
        tmps[0].write_text(json_text(metrics))
        if args.items:
            rows.write_parquet(tmps[1])
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"bench {bench.name}: {rows.height} items; " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
          + f" → {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="routelab", description=DESCRIPTION, epilog=EXAMPLES,
                           formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>", parser_class=OneLineParser,
                                help="one of the commands above")

    p = sub.add_parser(
        "extract", formatter_class=HelpFormatter,
        description="Record the router logits and top-k of every MoE layer for every real token of the\n"
                    "prompts (one row per prompt, layer and token; schema: routelab.tables). A Ctrl-C keeps\n"
                    "the finished chunks in <out>.parts/; running the same command again resumes from there.",
        epilog="example:\n  routelab extract --model data/models/diffuse --prompts data/prompts/diffuse.parquet "
               "--out routing.parquet",
    )
    _model_args(p)
    p.add_argument("--prompts", required=True,
                   help=".txt (UTF-8, one prompt per line; id = line number) or .parquet (columns prompt_id, text)")
    p.add_argument("--out", required=True, help="output .parquet")
    _arr_args(p, "record the routing")
    p.add_argument("--chunk-size", type=_positive_int, default=512, help="prompts per resumable shard")
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="truncate prompts to this many tokens (default: never; a prompt longer than the model's "
                        "positions is an error)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "bench", formatter_class=HelpFormatter,
        description="Score one benchmark by log-likelihood: its metrics with bootstrap 95 % CIs to --out,\n"
                    "and optionally one row per item to --items (written together, or neither).",
        epilog="example:\n  routelab bench --model data/models/diffuse --benchmark crows_pairs \\\n"
               "                 --data data/testbed/stereotyped/crows_pairs/crows_pairs_anonymized.csv "
               "--out crows.json",
    )
    _model_args(p)
    p.add_argument("--benchmark", required=True,
                   help="benchmark name, e.g. crows_pairs (an unknown name lists them all)")
    p.add_argument("--data", default=None,
                   help="local file or folder in the benchmark's original format (default: its copy in "
                        "../shared/benchmarks beside the project, else the Hub)")
    p.add_argument("--hub", action="store_true", help="load from the Hugging Face Hub even where a local copy exists")
    p.add_argument("--primer", default=None, help="TruthfulQA QA primer file (default: the shared qa_primer.txt)")
    p.add_argument("--out", required=True, help="metrics .json")
    p.add_argument("--items", default=None, help="per-item .parquet (one row per item: its LLs and scores)")
    _arr_args(p, "score")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    # A string, checked by routelab.scoring (default there: 268435456 = 256 MiB), so that a bad value is
    # one RoutelabError naming the flag; the constant is spelled out here to keep torch out of --help.
    p.add_argument("--max-logits-bytes", default="268435456", metavar="N",
                   help="most memory the scorer's logits take at once, in bytes (268435456 = 256 MiB); "
                        "scores do not depend on it beyond float rounding, peak memory does")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "check-params", formatter_class=HelpFormatter,
        description="Check params.yaml against the dataclass of each section (an unknown key is named with\n"
                    "the nearest known one), pipeline.models against models:, then each section's own checks\n"
                    "(ranges, λ grid, benchmark names) and masking.n against models on disk. One problem per line.",
        epilog="example:\n  routelab check-params\n  routelab check-params --params my_params.yaml --fast",
    )
    p.add_argument("--params", default="params.yaml", help="the params file")
    p.add_argument("--fast", action="store_true", help="keys and names only (no library import: well under a second)")
    p.set_defaults(func=cmd_check_params)

    p = sub.add_parser(
        "seeds", formatter_class=HelpFormatter,
        description="Read the workspace (its testbed.seed) and every DVC experiment with another testbed.seed\n"
                    "(dvc exp show), and write the headline numbers as mean ± sd and each ground-truth check\n"
                    "as the number of seeds in which it held.",
        epilog="example:\n  for s in 1 2 3 4; do dvc exp run -S testbed.seed=$s -n seed$s || break; done\n"
               "  git checkout -- params.yaml dvc.lock metrics plots data && dvc checkout\n"
               "  routelab seeds --out docs/seeds.md --readme README.md",
    )
    p.add_argument("--params", default="params.yaml", help="the params file (its pipeline.models by default)")
    p.add_argument("--models", nargs="*", default=None, help="models to summarise (default: pipeline.models)")
    p.add_argument("--out", default="docs/seeds.md", help="Markdown table (and the same name with .json)")
    p.add_argument("--readme", default=None, help="also refill this file's seeds table (between its seeds markers)")
    p.set_defaults(func=cmd_seeds)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (0, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RoutelabError as exc:
        # Plain print, no markup: a path in square brackets is text, not a style tag.
        print(f"routelab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"routelab {args.command}: interrupted: {interrupted_line(exc)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
