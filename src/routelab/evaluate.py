"""Evaluating a model (under any active routing edit) on the enabled benchmarks, per split.

Shared by the `bench_baseline` stage and later intervention stages: the same items, the
same splits (written once, read back by every stage), the same engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from routelab.benchmarks import get_benchmark, load_items, run_benchmark, split_benchmark
from routelab.errors import RoutelabError
from routelab.io import atomic_path, write_json
from routelab.models import LoadedModel

SPLITS = ("validation", "test")


@dataclass
class BenchParams:
    """The ``bench_baseline`` section of params.yaml."""

    benchmarks: list[str] = field(default_factory=lambda: ["crows_pairs", "truthfulqa", "perplexity"])
    model_sets: bool = True  # use a model's own benchmark files (models.<name>.benchmarks) where it has them
    hub: bool = False  # load benchmarks without a local path from the Hugging Face Hub
    paths: dict[str, str | None] = field(default_factory=dict)  # local files for real benchmarks
    primer: str | None = None  # TruthfulQA 6-shot QA primer (a model's own `primer` wins)
    bbq_categories: list[str] | None = None  # null = every category found
    stereoset_tasks: list[str] = field(default_factory=lambda: ["intrasentence", "intersentence"])
    max_length: int | None = None  # longest input in tokens; null = the model's limit
    seed: int = 0  # split and bootstrap seed (recorded in every output)
    val_fraction: float = 0.5  # share of each stratum in the validation split (AALS, λ*)
    n_bootstrap: int = 1000  # bootstrap resamples for the 95 % CIs

    def __post_init__(self) -> None:
        for name in self.benchmarks:
            get_benchmark(name)  # unknown names: "Did you mean …"
        if not 0 < self.val_fraction < 1:
            raise RoutelabError(f"bench_baseline.val_fraction must be in (0, 1), found {self.val_fraction}")


def sources(cfg: BenchParams, model_benchmarks: dict[str, str], model_primer: str | None) -> dict[str, dict]:
    """Where each enabled benchmark comes from: {name: {data_path, hub, primer_path}}."""
    out = {}
    for name in cfg.benchmarks:
        own = model_benchmarks.get(name) if cfg.model_sets else None
        path = own or cfg.paths.get(name)
        if path is None and not cfg.hub and name in ("stereoset", "perplexity"):
            raise RoutelabError(
                f"benchmark {name!r} has no local file: set bench_baseline.paths.{name}, "
                "or bench_baseline.hub: true, or remove it from bench_baseline.benchmarks"
            )
        primer = (model_primer if cfg.model_sets else None) or cfg.primer
        out[name] = {"data_path": path, "hub": path is None and cfg.hub, "primer_path": primer if name == "truthfulqa" else None}
    return out


def evaluate(
    lm: LoadedModel,
    cfg: BenchParams,
    srcs: dict[str, dict],
    out_dir: str | Path,
    splits_dir: str | Path,
    *,
    write_splits: bool = False,
) -> dict[str, Any]:
    """Score every benchmark on both splits; write per-item Parquet under ``out_dir``.

    ``write_splits``: create the split files in ``splits_dir`` (the baseline does); otherwise
    they are read, so every stage scores the same items. Returns {benchmark: {split: metrics}}.
    """
    results: dict[str, Any] = {}
    for name, src in srcs.items():
        options: dict[str, Any] = {}
        if name == "bbq" and cfg.bbq_categories:
            options["categories"] = cfg.bbq_categories
        if name == "stereoset":
            options["tasks"] = cfg.stereoset_tasks
        items = load_items(name, src["data_path"], hub=src["hub"], primer_path=src["primer_path"], **options)
        split_file = Path(splits_dir) / f"{name}.json"
        if write_splits:
            split = split_benchmark(name, items, cfg.seed, cfg.val_fraction)
            write_json(split_file, split)
        elif not split_file.exists():
            raise RoutelabError(f"split file {split_file} not found: run the `bench_baseline` stage first")
        else:
            split = json.loads(split_file.read_text())
            if split.get("n") != len(items):
                raise RoutelabError(
                    f"{split_file} was made for {split.get('n')} items of {name}, found {len(items)}: "
                    "the benchmark file changed; re-run `bench_baseline`"
                )
        results[name] = {}
        for part in SPLITS:
            metrics, frame = run_benchmark(
                lm.model, lm.tokenizer, name, items=items, split_ids=split[part], batch_size=lm.spec.batch_size,
                seed=cfg.seed, n_bootstrap=cfg.n_bootstrap, max_length=cfg.max_length,
                primer_path=src["primer_path"],
            )
            with atomic_path(Path(out_dir) / f"{name}_{part}.parquet") as tmp:
                frame.write_parquet(tmp)
            results[name][part] = metrics
    return results


def headline(results: dict[str, Any], part: str = "test") -> str:
    """One line of the headline numbers (for a stage summary)."""
    keys = {"crows_pairs": "pct_stereotype", "crows_pairs_revised": "pct_stereotype", "truthfulqa": "mc1",
            "perplexity": "ppl", "bbq": "s_dis", "stereoset": "icat"}
    bits = []
    for name, by_split in results.items():
        m = by_split.get(part, {})
        key = keys.get(name)
        val = m.get(key) if key else None
        if isinstance(val, (int, float)):
            bits.append(f"{name}.{key}={val:.3f}")
    return ", ".join(bits)


def read_items(out_dir: str | Path, name: str, part: str) -> pl.DataFrame:
    """Per-item results written by :func:`evaluate`."""
    p = Path(out_dir) / f"{name}_{part}.parquet"
    if not p.exists():
        raise RoutelabError(f"{p} not found: run the `bench_baseline` stage first")
    return pl.read_parquet(p)
