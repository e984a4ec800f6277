"""Evaluating a model (under any active routing edit) on the enabled benchmarks, per split.

Usage::

    cfg = section(BenchBaselineParams, params["bench_baseline"], "bench_baseline")
    items = load_benchmarks(cfg, spec)            # every input read before any model loads
    results = evaluate(load_model(spec), cfg, items, out_dir, splits_dir, write_splits=True)

Shared by the `bench_baseline` stage and later intervention stages: the same items, the
same splits (written once by bench_baseline, read back by every later stage), the same
engine (routelab.benchmarks.engine). Per-item tables go to ``<out>/<benchmark>_<split>.parquet``
(read them with routelab.tables.load_item_results); ``metrics_from_rows`` recomputes every
number from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routelab.benchmarks import get_benchmark, load_items, run_benchmark, split_benchmark
from routelab.benchmarks.base import Item
from routelab.benchmarks.engine import check_options
from routelab.errors import RoutelabError
from routelab.io import write_json, write_parquet
from routelab.models import LoadedModel, ModelSpec
from routelab.scoring import DEFAULT_MAX_LOGITS_BYTES, check_max_logits_bytes

SPLITS = ("validation", "test")


@dataclass
class BenchBaselineParams:
    """The ``bench_baseline`` section of params.yaml."""

    benchmarks: list[str] = field(default_factory=lambda: ["crows_pairs", "truthfulqa", "perplexity"])
    model_sets: bool = True  # use a model's own benchmark files (models.<name>.benchmarks) where it has them
    hub: bool = False  # true: benchmarks with no path here load from the Hub even when a default local copy exists
    paths: dict[str, str | None] = field(default_factory=dict)  # local files; null = default copy, else the Hub
    primer: str | None = None  # few-shot primer (TruthfulQA); a model's own `primer` wins
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # loader options per benchmark
    max_length: int | None = None  # longest input in tokens; null = the model's limit
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES  # most memory the scorer's logits take at once (routelab.scoring)
    seed: int = 0  # split and bootstrap seed (recorded in every output)
    val_fraction: float = 0.5  # share of each stratum in the validation split (AALS, λ*)
    n_bootstrap: int = 1000  # bootstrap resamples for the 95 % CIs
    limit: dict[str, int] = field(default_factory=dict)  # benchmark -> at most this many items per split (a smoke run)

    def __post_init__(self) -> None:
        for key, names in (("benchmarks", self.benchmarks), ("paths", self.paths), ("options", self.options)):
            for name in names:
                try:
                    get_benchmark(name)  # unknown names: "Did you mean …"
                except RoutelabError as exc:
                    raise RoutelabError(f"bench_baseline.{key}: {exc}") from None
        for name in self.benchmarks:
            bench = get_benchmark(name)
            if not bench.scored:
                raise RoutelabError(
                    f"bench_baseline.benchmarks: {name} is a {bench.output} benchmark, not scored by "
                    "log-likelihood yet; remove it"
                )
        for name, opts in self.options.items():
            check_options(get_benchmark(name), opts or {})
        check_max_logits_bytes(self.max_logits_bytes, "bench_baseline.max_logits_bytes")
        if not 0 < self.val_fraction < 1:
            raise RoutelabError(f"bench_baseline.val_fraction must be in (0, 1), found {self.val_fraction}")
        for name, n in self.limit.items():
            get_benchmark(name)
            if n < 1:
                raise RoutelabError(f"bench_baseline.limit.{name} = {n}: give at least 1 item per split, or remove the key")


def load_benchmarks(cfg: BenchBaselineParams, spec: ModelSpec) -> dict[str, list[Item]]:
    """Items of every enabled benchmark, from the model's own files (``models.<name>.benchmarks``,
    when ``model_sets``), ``bench_baseline.paths``, the default local copy or the Hub.

    Call it before loading the model: a missing file or an unreachable Hub is one error
    naming the benchmark and the params key, in seconds rather than after a model download.
    """
    primer = (spec.primer if cfg.model_sets else None) or cfg.primer
    out = {}
    for name in cfg.benchmarks:
        bench = get_benchmark(name)
        own = spec.benchmarks.get(name) if cfg.model_sets else None
        path = own or cfg.paths.get(name)
        out[name] = load_items(
            bench,
            path,
            hub=cfg.hub,
            primer_path=primer if bench.needs_primer else None,
            **(cfg.options.get(name) or {}),
        )
    return out


def item_table_path(out_dir: str | Path, name: str, part: str) -> Path:
    """Where :func:`evaluate` writes the per-item table of one benchmark and split."""
    return Path(out_dir) / f"{name}_{part}.parquet"


def _split(cfg: BenchBaselineParams, name: str, items: list[Item], splits_dir: str | Path, write: bool) -> dict[str, Any]:
    split_file = Path(splits_dir) / f"{name}.json"
    if write:
        split = split_benchmark(get_benchmark(name), items, cfg.seed, cfg.val_fraction)
        if name in cfg.limit:  # a smoke run: a seeded sample of each split (every later stage reads these files)
            rng = np.random.default_rng([cfg.seed, 99])
            for part in SPLITS:
                ids = split[part]
                if len(ids) > cfg.limit[name]:
                    split[part] = sorted(rng.choice(ids, cfg.limit[name], replace=False).tolist())
            split["limit"] = cfg.limit[name]
        write_json(split_file, split)
        return split
    if not split_file.exists():
        raise RoutelabError(f"split file {split_file} not found: run the `bench_baseline` stage first")
    split = json.loads(split_file.read_text())
    if split.get("n") != len(items):
        raise RoutelabError(
            f"{split_file} was made for {split.get('n')} items of {name}, found {len(items)}: "
            "the benchmark file changed; re-run `bench_baseline`"
        )
    return split


def evaluate(
    lm: LoadedModel,
    cfg: BenchBaselineParams,
    items: dict[str, list[Item]],
    out_dir: str | Path,
    splits_dir: str | Path,
    *,
    write_splits: bool = False,
) -> dict[str, Any]:
    """Score every benchmark in ``items`` (from :func:`load_benchmarks`) on both splits.

    Writes the per-item tables under ``out_dir``. ``write_splits``: create the split files in
    ``splits_dir`` (the baseline does); otherwise they are read, so every stage scores the
    same items. Returns {benchmark: {split: metrics}}.
    """
    results: dict[str, Any] = {}
    for name, bench_items in items.items():
        split = _split(cfg, name, bench_items, splits_dir, write_splits)
        results[name] = {}
        for part in SPLITS:
            metrics, rows = run_benchmark(
                lm.model, lm.tokenizer, get_benchmark(name), items=bench_items, split_ids=split[part],
                batch_size=lm.spec.batch_size, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap, max_length=cfg.max_length,
                description=f"{name}[{part}]", max_logits_bytes=cfg.max_logits_bytes,
            )
            write_parquet(rows, item_table_path(out_dir, name, part))
            results[name][part] = metrics
    return results


def headline(results: dict[str, Any], part: str = "test") -> str:
    """One line of each benchmark's summary number (for a stage summary)."""
    bits = []
    for name, by_split in results.items():
        key = get_benchmark(name).summary
        val = by_split.get(part, {}).get(key) if key else None
        if isinstance(val, (int, float)):
            bits.append(f"{name}.{key}={val:.3f}")
    return ", ".join(bits)

