"""Paired comparisons of conditions, item by item (docs/method.md §9).

    comps = compare_suite(suite, rows, stats)                               # every condition vs the baseline
    comps = compare_suite(suite, rows, stats, against=[("mask_top", "mask_random")])  # + condition vs condition
    records(comps)                                                          # flat JSON records (comparisons.json)
    results_table(comps)                                                    # {condition: {bench: {metric: …}}}

A metric's inputs come from the benchmark engine's own column logic
(routelab.benchmarks.engine.metric_inputs): the number a stage tests is the number bench_baseline
reports, computed by the same code. Each comparison is a paired test on the same items
(routelab.statistics.compare_paired): a permutation test of Δ, a bootstrap 95 % CI of Δ, whole
clusters where the benchmark declares them, and the equivalence test (TOST) where
``statistics.equivalence_margins`` has a margin for the metric. Benjamini–Hochberg runs across the
stage's whole family: every comparison the stage makes, against the baseline and between
conditions alike.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from routelab.benchmarks.base import Benchmark
from routelab.benchmarks.engine import metric_clusters, metric_inputs
from routelab.errors import RoutelabError
from routelab.interventions.engine import Suite
from routelab.statistics import Comparison, StatsParams, compare_paired, with_bh
from routelab.tables import ITEM_KEY

BASELINE = "baseline"  # the reference of a comparison with the unedited model's rows (bench_baseline)


def compare(
    bench: Benchmark,
    reference_rows: pl.DataFrame,
    rows: pl.DataFrame,
    metric: str,
    stats: StatsParams,
    *,
    condition: str,
    reference: str = BASELINE,
) -> Comparison:
    """One metric of ``condition`` against ``reference`` (the baseline or another condition), paired by item id."""
    reference_rows, rows = reference_rows.sort(ITEM_KEY), rows.sort(ITEM_KEY)
    if reference_rows[ITEM_KEY].to_list() != rows[ITEM_KEY].to_list():
        raise RoutelabError(f"{bench.name}: '{reference}' and condition '{condition}' hold different items")
    keep_r, cols_r = metric_inputs(bench, reference_rows, metric)
    keep_c, cols_c = metric_inputs(bench, rows, metric, codes_from=reference_rows)
    if not np.array_equal(keep_r, keep_c):
        raise RoutelabError(
            f"{bench.name}.{metric}: the metric's row filter selects other items under '{condition}' than under "
            f"'{reference}'; a metric filter must depend on item properties only"
        )
    if cols_r is None or cols_c is None:
        raise RoutelabError(f"{bench.name}.{metric}: no item passes the metric's filter on this split")
    return compare_paired(
        cols_r, cols_c, bench.metrics[metric].stat, metric=metric, benchmark=bench.name, condition=condition,
        reference=reference, clusters=metric_clusters(bench, reference_rows, metric),
        margin=stats.equivalence_margins.get(metric), alpha=stats.alpha, seed=stats.seed,
        n_permutations=stats.n_permutations, n_bootstrap=stats.n_bootstrap,
    )  # fmt: skip


def compare_suite(
    suite: Suite,
    rows: Mapping[str, Mapping[str, pl.DataFrame]],
    stats: StatsParams,
    *,
    metrics: Mapping[str, Sequence[str]] | None = None,
    against: Sequence[tuple[str, str]] = (),
) -> list[Comparison]:
    """Every (condition, benchmark, metric) against the baseline, then each (condition, reference
    condition) pair of ``against``; BH across all of them (the stage's family).

    ``metrics``: {benchmark: metric names}; default each benchmark's headline metrics.
    """
    out = []
    for cond_name, by_bench in rows.items():
        for name, cond_rows in by_bench.items():
            bench = suite.benches[name][0]
            for metric in _metrics(bench, metrics):
                out.append(compare(bench, suite.baseline[name], cond_rows, metric, stats, condition=cond_name))
    for cond_name, ref_name in against:
        for name, cond_rows in rows[cond_name].items():
            bench = suite.benches[name][0]
            for metric in _metrics(bench, metrics):
                out.append(compare(bench, rows[ref_name][name], cond_rows, metric, stats, condition=cond_name,
                                   reference=ref_name))  # fmt: skip
    return with_bh(out, alpha=stats.alpha)


def _metrics(bench: Benchmark, metrics: Mapping[str, Sequence[str]] | None) -> Sequence[str]:
    return (metrics or {}).get(bench.name, bench.headline)


RECORD_FIELDS = ("condition", "reference", "benchmark", "metric", "before", "after", "delta", "p", "p_bh",
                 "ci_low", "ci_high", "effect", "n", "n_clusters", "margin", "p_tost", "equivalent",
                 "n_permutations", "n_bootstrap", "seed")  # fmt: skip


def records(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Flat JSON records (comparisons.json of every intervention stage)."""
    return [{k: getattr(c, k) for k in RECORD_FIELDS} for c in comparisons]


def _entry(c: Comparison) -> dict[str, Any]:
    out = {"before": c.before, "after": c.after, "delta": c.delta, "p_bh": c.p_bh, "ci_low": c.ci_low,
           "ci_high": c.ci_high}  # fmt: skip
    if c.margin is not None:
        out |= {"equivalent": c.equivalent, "p_tost": c.p_tost}
    return out


def results_table(comparisons: Sequence[Comparison]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{condition: {benchmark key: {metric: {before, after, delta, p_bh, ci_low, ci_high[, equivalent, p_tost]}}}}
    of the comparisons with the baseline; a comparison between conditions is keyed
    ``<condition>_vs_<reference>``. The stage's results in its metrics file (every record with
    its p, effect size and n is in <out>/comparisons.json)."""
    from routelab.benchmarks import get_benchmark

    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for c in comparisons:
        name = c.condition if c.reference == BASELINE else f"{c.condition}_vs_{c.reference}"
        out.setdefault(name, {}).setdefault(get_benchmark(c.benchmark).key, {})[c.metric] = _entry(c)
    return out


def find(comparisons: Sequence[Comparison], condition: str, benchmark: str, metric: str,
         reference: str = BASELINE) -> Comparison:  # fmt: skip
    """The comparison of one (condition, benchmark, metric, reference); an error naming what exists otherwise."""
    for c in comparisons:
        if (c.condition, c.benchmark, c.metric, c.reference) == (condition, benchmark, metric, reference):
            return c
    have = sorted({(c.condition, c.benchmark, c.metric) for c in comparisons})
    raise RoutelabError(f"no comparison {condition}/{benchmark}.{metric} vs {reference}; have {have[:8]}…")
