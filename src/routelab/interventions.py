"""The conditions engine: named conditions × benchmarks × one split, compared item by item with
the baseline (docs/method.md §3, §4, §9).

    suite = load_suite(bench_cfg, spec, ["crows_pairs", "perplexity"], "validation",
                       splits_dir="data/bench/m/splits", baseline_dir="data/bench/m/baseline")
    rows = score_conditions(lm, [cond_a, cond_b], suite)           # {condition: {benchmark: rows}}
    table = compare_all(suite, rows, seed=0)                        # Comparisons, BH across them

Every intervention stage (aals, arr_sweep, arr_test, masking, ablation, baselines, steer) is
this loop with its own conditions. The C conditions of a stage are scored in ONE pass: each
request is replicated once per condition, the replicas share batches, and each batch row runs
under its own routing edit (routing.attach with per-row conditions):

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

import numpy as np
import polars as pl
from transformers import AutoConfig

from routelab.adapters import adapter_for_config
from routelab.conditions import ConditionContext
from routelab.config import load_params, section
from routelab.models import model_spec
from routelab.tables import load_profile

from routelab.benchmarks import get_benchmark, item_rows
from routelab.benchmarks.base import Benchmark, Item
from routelab.benchmarks.splits import select_items
from routelab.conditions import Condition
from routelab.errors import RoutelabError
from routelab.evaluate import BenchParams, item_table_path, load_benchmarks
from routelab.io import write_json, write_parquet
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
from routelab.statistics import N_BOOTSTRAP, N_PERMUTATIONS, Comparison, StatsParams, compare_paired, with_bh
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
    cfg: BenchParams,
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
    sub = BenchParams(**{**cfg.__dict__, "benchmarks": list(names)})
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


# --------------------------------------------------------------------------------------------
# Comparisons with the baseline
# --------------------------------------------------------------------------------------------


def metric_columns(bench: Benchmark, rows: pl.DataFrame, metric: str, codes_from: pl.DataFrame | None = None):
    """(row mask, column arrays) a metric of ``bench`` reads from ``rows`` (sorted by id).

    String columns become integer codes over ``codes_from`` (default ``rows``), so two
    tables of the same items get the same codes.
    """
    if metric not in bench.metrics:
        raise RoutelabError(f"{bench.name} has no metric '{metric}' (metrics: {', '.join(bench.metrics)})")
    m = bench.metrics[metric]
    keep = np.ones(rows.height, dtype=bool)
    for col, value in m.where.items():
        keep &= (rows[col] == value).fill_null(False).to_numpy()
    arrays = []
    for c in m.columns:
        col = rows[c]
        if col.dtype == pl.String:
            vocab = np.unique((codes_from if codes_from is not None else rows)[c].to_numpy().astype(str))
            arrays.append(np.searchsorted(vocab, col.to_numpy().astype(str))[keep])
        else:
            arrays.append(col.to_numpy().astype(float)[keep])
    return keep, tuple(arrays)


def compare(
    bench: Benchmark,
    base: pl.DataFrame,
    cond: pl.DataFrame,
    metric: str,
    *,
    condition: str,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
    n_bootstrap: int = N_BOOTSTRAP,
) -> Comparison:
    """One metric, baseline vs condition, paired by item id (routelab.statistics.compare_paired)."""
    base, cond = base.sort(ITEM_KEY), cond.sort(ITEM_KEY)
    if base[ITEM_KEY].to_list() != cond[ITEM_KEY].to_list():
        raise RoutelabError(f"{bench.name}: baseline and condition '{condition}' hold different items")
    kb, cols_b = metric_columns(bench, base, metric)
    kc, cols_c = metric_columns(bench, cond, metric, codes_from=base)
    if not np.array_equal(kb, kc):
        raise RoutelabError(
            f"{bench.name}.{metric}: the metric's row filter selects other items under '{condition}' "
            "than in the baseline; a metric filter must depend on item properties only"
        )
    if not kb.any():
        raise RoutelabError(f"{bench.name}.{metric}: no item passes the metric's filter on this split")
    return compare_paired(cols_b, cols_c, bench.metrics[metric].stat, metric=metric, benchmark=bench.name,
                          condition=condition, seed=seed, n_permutations=n_permutations,
                          n_bootstrap=n_bootstrap)  # fmt: skip


def compare_all(
    suite: Suite,
    rows: Mapping[str, Mapping[str, pl.DataFrame]],
    *,
    metrics: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
    n_bootstrap: int = N_BOOTSTRAP,
    alpha: float = 0.05,
) -> list[Comparison]:
    """Every (condition, benchmark, metric) against the baseline; BH across all of them (the
    stage's family). ``metrics``: {benchmark: metric names}; default the entry's headline."""
    out = []
    for cond_name, by_bench in rows.items():
        for name, cond_rows in by_bench.items():
            bench = suite.benches[name][0]
            for metric in (metrics or {}).get(name, bench.headline):
                out.append(compare(bench, suite.baseline[name], cond_rows, metric, condition=cond_name, seed=seed,
                                   n_permutations=n_permutations, n_bootstrap=n_bootstrap))  # fmt: skip
    return with_bh(out, alpha=alpha)


def comparison_records(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Flat JSON records (the layout of every intervention table)."""
    keep = ("condition", "benchmark", "metric", "before", "after", "delta", "p", "p_bh", "ci_low", "ci_high",
            "effect", "n", "n_permutations", "n_bootstrap", "seed")  # fmt: skip
    return [{k: getattr(c, k) for k in keep} for c in comparisons]


def write_condition_tables(out_dir: str | Path, rows: Mapping[str, Mapping[str, pl.DataFrame]], split: str) -> None:
    """Per-item tables of every condition: <out>/<condition slug>/<benchmark>_<split>.parquet."""
    for cond_name, by_bench in rows.items():
        for name, table in by_bench.items():
            write_parquet(table, item_table_path(Path(out_dir) / slug(cond_name), name, split))


def slug(name: str) -> str:
    """A file-name-safe form of a condition name."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("_") or "condition"


# --------------------------------------------------------------------------------------------
# What every intervention stage reads before it loads a model
# --------------------------------------------------------------------------------------------


def model_sizes(spec: ModelSpec) -> tuple[int, int, int]:
    """(K routed experts, top-k, decoder layers) from the model's config alone (no weights)."""
    try:
        config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    except (OSError, ValueError) as exc:
        raise RoutelabError(f"cannot read the config of model {spec.path!r}: {exc}") from None
    K, k = adapter_for_config(config).sizes(config)
    return K, k, int(getattr(config, "num_hidden_layers", 0) or 0)


@dataclass
class StageInputs:
    """An intervention stage's inputs, checked before any model is loaded."""

    model: str  # the model's name in params.yaml
    spec: ModelSpec
    bench: BenchParams
    stats: StatsParams
    params: dict[str, Any]  # the whole params.yaml (the stage reads its own section)
    profile: pl.DataFrame  # the φ profile, checked against the model's K and layers
    num_experts: int
    top_k: int

    def context(self, layers: list[int], seed: int) -> ConditionContext:
        """A condition context editing ``layers`` (the layers ARR-style conditions touch)."""
        return ConditionContext(self.profile, layers, self.num_experts, self.top_k, seed)

    @property
    def moe_layers(self) -> list[int]:
        return sorted(set(self.profile["layer"].to_list()))


def stage_inputs(params_path: str | Path, model: str, profile_path: str | Path) -> StageInputs:
    """Params, model spec, benchmark settings and the φ profile of ``model``, all checked."""
    params = load_params(params_path)
    spec = model_spec(params, model)
    bench = section(BenchParams, params.get("bench_baseline"), "bench_baseline")
    stats = section(StatsParams, params.get("statistics"), "statistics")
    K, k, n_layers = model_sizes(spec)
    profile = load_profile(profile_path, num_experts=K)
    layers = sorted(set(profile["layer"].to_list()))
    if n_layers and max(layers) >= n_layers:
        raise RoutelabError(
            f"{profile_path}: layers {layers} but model {model} has {n_layers} decoder layers: a profile "
            "of another model; re-run the `profile` stage for this model"
        )
    return StageInputs(model, spec, bench, stats, params, profile, K, k)


def run_and_compare(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    suite: Suite,
    stats: StatsParams,
    *,
    out_dir: str | Path | None = None,
    label: str = "conditions",
    groups: bool = True,
    metrics: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, dict[str, pl.DataFrame]], list[Comparison]]:
    """Score ``conditions`` in one pass, write their per-item tables, compare with the baseline.

    Draws of a random condition (same ``group``) are also compared as their per-item average
    (``<group>``), the paper's "averaged over draws". BH runs across the whole family.
    """
    rows = score_conditions(lm, conditions, suite, label=label)
    if groups:
        by_group: dict[str, list[str]] = {}
        for c in conditions:
            if c.group:
                by_group.setdefault(c.group, []).append(c.name)
        for g, names in by_group.items():
            rows[g] = {b: average_draws([rows[n][b] for n in names]) for b in suite.benches}
    if out_dir is not None:
        write_condition_tables(out_dir, rows, suite.split)
    comps = compare_all(suite, rows, metrics=metrics, seed=stats.seed, n_permutations=stats.n_permutations,
                        n_bootstrap=stats.n_bootstrap, alpha=stats.alpha)  # fmt: skip
    return rows, comps


def headline_table(comparisons: Sequence[Comparison]) -> dict[str, dict[str, dict[str, Any]]]:
    """{condition: {"<benchmark>.<metric>": {before, after, delta, p_bh}}} of each benchmark's summary
    metric: the few numbers `dvc metrics diff` shows (every metric is in <out>/comparisons.json)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in comparisons:
        if c.metric != get_benchmark(c.benchmark).summary:
            continue
        out.setdefault(c.condition, {})[f"{c.benchmark}.{c.metric}"] = {
            "before": c.before, "after": c.after, "delta": c.delta, "p_bh": c.p_bh,
        }  # fmt: skip
    return out


def write_stage_outputs(result: dict[str, Any], metrics_path: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
    """Write a stage's metrics (without its full comparison records) and <out>/comparisons.json
    (every comparison record: condition, benchmark, metric, before, after, Δ, p, p_BH, CI, effect,
    n, seed); returns the records."""
    records = result.pop("comparisons")
    write_json(Path(out_dir) / "comparisons.json", records)
    write_json(metrics_path, result)
    return records


def delta_line(result: Mapping[str, Any], conditions: Sequence[str]) -> str:
    """A summary line: Δ of each condition's summary metric per benchmark, with BH-adjusted p."""
    parts = []
    for name in conditions:
        res = result["results"].get(name)
        if not res:
            continue
        bits = [f"{k} {v['delta']:+.3f} (p_BH {v['p_bh']:.2g})" for k, v in res.items()]
        parts.append(f"{name}: " + ", ".join(bits))
    return "; ".join(parts)
