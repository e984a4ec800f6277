"""The conditions engine: C named conditions scored on the benchmarks of one split in one pass
(docs/method.md §3, §4).

    suite = load_suite(bench_cfg, spec, ["crows_pairs", "perplexity"], "validation",
                       splits_dir="data/bench/m/splits", baseline_dir="data/bench/m/baseline")
    rows = score_conditions(lm, [cond_a, cond_b], suite)           # {condition: {benchmark: rows}}

Each request is replicated once per condition, the replicas share batches, and each batch row
runs under its own routing edit (routing.attach with per-row conditions):

    requests (item × option)        rows of the batches (longest first)
    ┌──────────────┐                ┌──────────────────────────┐
    │ r1 r2 r3 …   │  × C  ──────►  │ r1@c0 r1@c1 r2@c0 r2@c1 …│  hook: row b under condition ids[b]
    └──────────────┘                └──────────────────────────┘

Requests are tokenised once for all conditions (a prompt prefix makes its own requests). The
baseline is read from the `bench_baseline` stage's per-item tables, never recomputed: the
unedited layers of a condition pass the router's own output through untouched, so a condition
that edits nothing scores exactly the baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl

from routelab.bench_baseline import BenchBaselineParams, item_table_path, load_benchmarks
from routelab.benchmarks import get_benchmark, item_rows
from routelab.benchmarks.base import Benchmark, Item
from routelab.benchmarks.splits import select_items
from routelab.conditions import Condition
from routelab.errors import RoutelabError
from routelab.io import write_parquet
from routelab.models import LoadedModel, ModelSpec
from routelab.routing import LayerFork, attach
from routelab.scoring import (
    DEFAULT_MAX_LOGITS_BYTES,
    LL,
    encode_pair,
    joined_tokens,
    prefix_token_id,
    rolling_windows,
    score_tokens,
    score_tokens_forked,
)
from routelab.tables import ITEM_KEY, load_item_results


@dataclass
class Suite:
    """The benchmarks a stage evaluates, on one split, with the baseline's per-item rows."""

    split: str  # validation | test
    benches: dict[str, tuple[Benchmark, list[Item]]]  # name -> (entry, the split's items)
    baseline: dict[str, pl.DataFrame]  # name -> per-item rows of the unedited model (bench_baseline)
    max_length: int | None = None
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES  # bench_baseline.max_logits_bytes


def load_suite(
    cfg: BenchBaselineParams,
    spec: ModelSpec,
    names: Sequence[str],
    split: str,
    *,
    splits_dir: str | Path,
    baseline_dir: str | Path,
) -> Suite:
    """Items of ``names`` on ``split`` (the split files of `bench_baseline`) and the baseline rows.

    Reads inputs only (no model): call it before loading the model so a missing input fails fast.
    """
    missing = [n for n in names if n not in cfg.benchmarks]
    if missing:
        raise RoutelabError(
            f"benchmarks {missing} are not scored by bench_baseline (bench_baseline.benchmarks: "
            f"{cfg.benchmarks}): add them there, so that their baseline and splits exist"
        )
    sub = BenchBaselineParams(**{**cfg.__dict__, "benchmarks": list(names)})
    items = load_benchmarks(sub, spec)
    benches, baseline = {}, {}
    for name in names:
        split_file = Path(splits_dir) / f"{name}.json"
        if not split_file.exists():
            raise RoutelabError(f"split file {split_file} not found: run the `bench_baseline` stage first")
        ids = json.loads(split_file.read_text())[split]
        benches[name] = (get_benchmark(name), select_items(items[name], ids))
        base = load_item_results(item_table_path(baseline_dir, name, split))
        if sorted(base[ITEM_KEY].to_list()) != sorted(ids):
            raise RoutelabError(
                f"{item_table_path(baseline_dir, name, split)} holds other items than the {split} split "
                f"of {name}: re-run `bench_baseline`"
            )
        baseline[name] = base
    return Suite(split, benches, baseline, cfg.max_length, cfg.max_logits_bytes)


# --------------------------------------------------------------------------------------------
# Scoring C conditions in one pass
# --------------------------------------------------------------------------------------------


def _token_requests(tok: Any, bench: Benchmark, items: Sequence[Item], prefix: str, max_length: int | None,
                    cache: dict) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """Token requests of every item under one prompt prefix, and the item index of each."""
    out, owner = [], []
    for i, it in enumerate(items):
        for r in bench.requests(it):
            if bench.output == "rolling":
                # a whole text: after BOS, or as the continuation of the prefix (prompt debiasing)
                if prefix:
                    key = (prefix.rstrip(), " " + r)
                    if key not in cache:
                        cache[key] = encode_pair(tok, *key)
                    out.append(cache[key])
                    owner.append(i)
                    continue
                key = ("<rolling>", r)
                if key not in cache:
                    ids = list(tok(r, add_special_tokens=False)["input_ids"])
                    if not ids:
                        raise RoutelabError(f"{bench.name}: item {it['id']} tokenises to nothing; drop it")
                    cache[key] = rolling_windows(ids, prefix_token_id(tok), max_length or 10**9)
                for w in cache[key]:
                    out.append(w)
                    owner.append(i)
                continue
            ctx, cont = r
            key = ((prefix + ctx) if prefix else ctx, cont)
            if key not in cache:
                cache[key] = encode_pair(tok, *key)
            out.append(cache[key])
            owner.append(i)
    return out, owner


def _regroup(bench: Benchmark, items: Sequence[Item], lls: list[LL], owner: list[int]) -> list[list[LL]]:
    """LLs back to items; a rolling item's windows sum into one LL."""
    per: list[list[LL]] = [[] for _ in items]
    for i, ll in zip(owner, lls):
        per[i].append(ll)
    if bench.output != "rolling":
        return per
    return [[LL(sum(x.logprob for x in w), sum(x.n_tokens for x in w), all(x.greedy for x in w), *joined_tokens(w))]
            for w in per]


def score_conditions(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    suite: Suite,
    *,
    progress: bool = True,
    label: str = "conditions",
    fork: bool = True,
    token_level: bool | None = None,
) -> dict[str, dict[str, pl.DataFrame]]:
    """Per-item rows of every condition on every benchmark of the suite, in one pass per benchmark.

    With ``fork`` (and a family that allows it, and no prompt prefix among the conditions) the
    layers before each condition's first edited layer are computed once per batch; otherwise
    each condition's replica of a request is its own batch row. Both give the same scores.
    ``token_level`` (default: each benchmark's ``token_level``) gives ``bench.per_item`` LLs with
    per-token log-probabilities and ids; the logits budget is ``suite.max_logits_bytes``.
    Returns {condition name: {benchmark: rows}} (rows as ``bench.per_item`` makes them).
    """
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RoutelabError(f"conditions {dup} appear twice: every condition needs its own name")
    out: dict[str, dict[str, pl.DataFrame]] = {c.name: {} for c in conditions}
    max_length = suite.max_length or getattr(lm.model.config, "max_position_embeddings", None)
    fork = fork and lm.adapter.layer_fork and not any(c.prefix for c in conditions)
    edits = [c.edit for c in conditions] + ([None] if fork else [])  # the fork's trunk runs unedited
    with attach(lm, conditions=edits) as session:
        for name, (bench, items) in suite.benches.items():
            cache: dict = {}
            desc = f"{label} {name} ({len(conditions)} conditions)"
            memory = dict(max_logits_bytes=suite.max_logits_bytes,
                          token_level=bench.token_level if token_level is None else token_level)
            if fork:
                # Every condition scores the same requests: one forward per batch computes the
                # layers before each condition's first edited layer once (routing.LayerFork).
                reqs, owner = _token_requests(lm.tokenizer, bench, items, "", max_length, cache)
                firsts = [min(c.edit.layers) if c.edit is not None and c.edit.layers else None for c in conditions]
                # rows after the last fork: C × B; B keeps them within 4 × the model's batch size
                B = max(1, min(lm.spec.batch_size, 4 * lm.spec.batch_size // len(conditions)))
                lls = score_tokens_forked(
                    lm.model, reqs, LayerFork(lm.model, session, firsts), len(conditions), batch_size=B,
                    max_length=max_length, pad_token_id=lm.tokenizer.pad_token_id or 0, progress=progress,
                    description=desc, **memory,
                )  # fmt: skip
                for ci, cond in enumerate(conditions):
                    per = [x[ci] for x in lls]
                    out[cond.name][name] = item_rows(bench, items, _regroup(bench, items, per, owner))
                continue
            flat, owners, row_cond, spans = [], [], [], []
            for ci, cond in enumerate(conditions):
                reqs, owner = _token_requests(lm.tokenizer, bench, items, cond.prefix, max_length, cache)
                spans.append((len(flat), len(flat) + len(reqs)))
                flat += reqs
                owners.append(owner)
                row_cond += [ci] * len(reqs)
            lls = score_tokens(
                lm.model, flat, batch_size=lm.spec.batch_size, max_length=max_length,
                pad_token_id=lm.tokenizer.pad_token_id or 0, progress=progress,
                description=desc, row_conditions=row_cond, session=session, **memory,
            )  # fmt: skip
            for ci, cond in enumerate(conditions):
                a, b = spans[ci]
                out[cond.name][name] = item_rows(bench, items, _regroup(bench, items, lls[a:b], owners[ci]))
    return out


def average_draws(tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Per item, the mean over draws of every numeric column (a random condition in expectation).

    Comparing this table with the baseline tests the random condition averaged over its draws
    (e.g. the paper's "Random-10 (avg)"); non-numeric columns come from the first draw.
    """
    if not tables:
        raise RoutelabError("average_draws: no draws")
    first = tables[0].sort(ITEM_KEY)
    numeric = [c for c, t in first.schema.items() if t.is_numeric() and c != ITEM_KEY]
    stacked = pl.concat([t.sort(ITEM_KEY).select(ITEM_KEY, *numeric) for t in tables])
    mean = stacked.group_by(ITEM_KEY, maintain_order=True).agg(pl.col(c).cast(pl.Float64).mean() for c in numeric)
    return first.drop(numeric).join(mean, on=ITEM_KEY, how="left").select(first.columns)


def write_condition_tables(out_dir: str | Path, rows: Mapping[str, Mapping[str, pl.DataFrame]], split: str) -> None:
    """Per-item tables of every condition: <out>/<condition slug>/<benchmark>_<split>.parquet."""
    for cond_name, by_bench in rows.items():
        for name, table in by_bench.items():
            write_parquet(table, item_table_path(Path(out_dir) / slug(cond_name), name, split))


def slug(name: str) -> str:
    """A file-name-safe form of a condition name."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("_") or "condition"
