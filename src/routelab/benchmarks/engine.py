"""Running a benchmark: load → requests → routelab.scoring → per-item rows → metrics.

Usage::

    from routelab.benchmarks import get_benchmark, load_items, run_benchmark
    crows = get_benchmark("crows_pairs")
    metrics, rows = run_benchmark(model, tokenizer, crows, seed=0)
    again = metrics_from_rows(crows, rows)          # same numbers, from the rows table alone

Every benchmark goes the same way::

    bench.load(source)        items   [{id, ...}, ...]                      one per item
        │ bench.requests(item)        [(context, continuation), ...]        k_i per item
        │                              (rolling: [text])
        ▼ routelab.scoring            one LL per request, all items in one batched call
    bench.per_item(item, lls) rows    one row per item (the per-item table)
        ▼ bench.metrics, breakdowns   named aggregations over the rows: the point values, every
                                      breakdown block and the bootstrap CIs all come from the
                                      same (columns, where, stat) of the same rows

:func:`metrics_from_rows` needs only the rows table, so a paired comparison can recompute a
metric on resampled or re-joined rows without scoring again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from routelab.benchmarks.base import (
    Benchmark,
    Breakdown,
    HubSource,
    Item,
    Metric,
    Source,
    malformed,
    source_label,
)
from routelab.benchmarks.splits import select_items
from routelab.errors import RoutelabError
from routelab.scoring import DEFAULT_MAX_LOGITS_BYTES, LL, rolling_loglikelihood, score
from routelab.statistics import CONFIDENCE, N_BOOTSTRAP, bootstrap_ci

Metrics = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Loading: which source, which options
# --------------------------------------------------------------------------------------------


def resolve_source(bench: Benchmark, path: str | Path | Source | None = None, hub: bool = False) -> Source:
    """Where ``bench`` loads from: the given path (or source); else the Hub when asked; else its
    default local copy; else its Hub source. A configured file that is missing is an error
    when it is read, never a silent switch to the Hub."""
    if isinstance(path, HubSource):
        return path
    if path is not None:
        return Path(path)
    if hub or bench.default_path is None:
        if bench.hub is None:
            raise RoutelabError(
                f"{bench.name} has no Hub source and no local file given: point "
                f"bench_baseline.paths.{bench.name} (routelab bench: --data) at one"
            )
        return bench.hub
    return bench.default_path


def check_options(bench: Benchmark, options: Mapping[str, Any]) -> dict[str, Any]:
    """The loader options of ``bench`` with its defaults filled in; unknown names are an error."""
    unknown = sorted(set(options) - set(bench.options))
    if unknown:
        raise RoutelabError(
            f"bench_baseline.options.{bench.name}: unknown option(s) {', '.join(unknown)}; "
            f"{bench.name} takes: {', '.join(bench.options) or 'none'}"
        )
    return {**bench.options, **options}


def load_items(
    bench: Benchmark,
    data_path: str | Path | Source | None = None,
    *,
    hub: bool = False,
    primer_path: str | Path | None = None,
    **options: Any,
) -> list[Item]:
    """Items of ``bench`` from ``data_path``, its default local copy or the Hub (:func:`resolve_source`)."""
    kwargs = check_options(bench, options)
    if bench.needs_primer:
        kwargs["primer_path"] = primer_path
    elif primer_path is not None:
        raise RoutelabError(f"{bench.name} takes no few-shot primer: drop --primer")
    source = resolve_source(bench, data_path, hub)
    try:
        return bench.load(source, **kwargs)
    except UnicodeDecodeError as exc:  # a loader that reads text without base.not_utf8 (which names the file)
        where = source_label(source) + (f" (or the primer {primer_path})" if bench.needs_primer else "")
        raise malformed(bench.name, where, f"byte {exc.start}", "a file that is not UTF-8 text",
                        "UTF-8 text files in the benchmark's format") from None


# --------------------------------------------------------------------------------------------
# Scoring and the per-item table
# --------------------------------------------------------------------------------------------


def item_lls(
    model: Any,
    tokenizer: Any,
    bench: Benchmark,
    items: Sequence[Item],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    description: str | None = None,
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    token_level: bool | None = None,
) -> list[list[LL]]:
    """One LL per request of every item (``lls[i][k]``: request ``k`` of item ``i``).

    Usage: ``lls = item_lls(model, tokenizer, get_benchmark("truthfulqa"), items, batch_size=8)``.
    ``token_level`` (default: the benchmark's ``token_level``) adds per-token log-probabilities
    and ids to each LL; ``max_logits_bytes``: see routelab.scoring.score_tokens.
    """
    if not bench.scored or bench.requests is None:
        raise RoutelabError(
            f"{bench.name} is a {bench.output} benchmark: routelab scores it by log-likelihood only "
            "once it has a per-item function; remove it from bench_baseline.benchmarks"
        )
    reqs = [bench.requests(it) for it in items]
    flat = [r for rs in reqs for r in rs]
    kwargs = dict(batch_size=batch_size, max_length=max_length, progress=progress,
                  description=description or bench.name, max_logits_bytes=max_logits_bytes,
                  token_level=bench.token_level if token_level is None else token_level)  # fmt: skip
    if bench.output == "rolling":
        scored = rolling_loglikelihood(model, tokenizer, flat, **kwargs)
    else:
        scored = score(model, tokenizer, flat, **kwargs)
    lls, pos = [], 0
    for rs in reqs:  # regroup: item i owns the next len(rs) results
        lls.append(scored[pos : pos + len(rs)])
        pos += len(rs)
    assert pos == len(scored), f"regrouped {pos} of {len(scored)} results"
    return lls


def item_rows(bench: Benchmark, items: Sequence[Item], lls: Sequence[Sequence[LL]]) -> pl.DataFrame:
    """The per-item table: ``bench.per_item`` of every item, in the items' order."""
    if bench.per_item is None or bench.requests is None:
        raise RoutelabError(f"{bench.name} has no per-item function ({bench.output} benchmark)")
    if len(items) != len(lls):
        raise RoutelabError(f"{bench.name}: {len(items)} items but {len(lls)} LL rows")
    for it, x in zip(items, lls):
        k = len(bench.requests(it))
        if len(x) != k:
            raise RoutelabError(
                f"{bench.name}: every item needs one LL per request; item {it['id']} needs {k} LLs, got {len(x)}"
            )
    rows = pl.DataFrame([bench.per_item(it, x) for it, x in zip(items, lls)], infer_schema_length=None)
    if bench.cluster_key is not None:  # the resampling unit of every test on these rows
        rows = rows.with_columns(cluster=pl.Series([cluster_of(bench, it) for it in items], dtype=pl.String))
    return rows


def cluster_of(bench: Benchmark, item: Item) -> str:
    """An item's cluster label (``bench.cluster_key``); an item without one is a cluster of its own."""
    label = item.get(bench.cluster_key) if bench.cluster_key else None
    return str(label) if label not in (None, "") else f"item:{item['id']}"


# --------------------------------------------------------------------------------------------
# Metrics from the rows table
# --------------------------------------------------------------------------------------------


class _Columns:
    """Columns of a rows table as numpy arrays, each converted once.

    String columns become integer codes over the WHOLE table (np.unique order), so a subset
    keeps the codes of the full table (the term-macro StereoSet statistics bin by code).
    ``codes_from``: code strings over another table of the same items instead (a condition's
    rows coded like the baseline's, so the two agree code for code).
    """

    def __init__(self, bench: Benchmark, rows: pl.DataFrame, codes_from: pl.DataFrame | None = None):
        self.bench, self.rows, self.codes_from, self._arrays = bench, rows, codes_from, {}
        self.everything = np.ones(rows.height, dtype=bool)  # (N,)

    def _column(self, name: str, rows: pl.DataFrame | None = None) -> pl.Series:
        rows = self.rows if rows is None else rows
        if name not in rows.columns:
            raise RoutelabError(
                f"{self.bench.name}: a metric reads column '{name}', which the items table lacks "
                f"(columns: {', '.join(rows.columns)}): was it written by another routelab version?"
            )
        return rows[name]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            col = self._column(name)
            if col.dtype == pl.String:
                values = col.to_numpy().astype(str)
                ref = values if self.codes_from is None else self._column(name, self.codes_from).to_numpy().astype(str)
                self._arrays[name] = np.searchsorted(np.unique(ref), values)  # (N,) codes over the reference's values
            else:
                self._arrays[name] = col.to_numpy()  # (N,)
        return self._arrays[name]

    def mask(self, where: Mapping[str, Any]) -> np.ndarray:
        """Rows whose every ``where`` column equals its value (nulls never match)."""
        keep = self.everything.copy()  # (N,)
        for name, value in where.items():
            keep &= (self._column(name) == value).fill_null(False).to_numpy()
        return keep

    def clusters(self, mask: np.ndarray) -> np.ndarray | None:
        """The cluster labels of the rows in ``mask`` (None: the benchmark declares no clusters)."""
        if self.bench.cluster_key is None or "cluster" not in self.rows.columns:
            return None
        return self.rows["cluster"].to_numpy().astype(str)[mask]

    def inputs(self, metric: Metric, mask: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The column arrays ``metric`` aggregates within ``mask``; None when no row passes its filter."""
        keep = mask & self.mask(metric.where)  # (N,)
        return tuple(self[c][keep] for c in metric.columns) if keep.any() else None

    def parts(self, b: Breakdown, base: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        """(group value or None, row mask) of each block of breakdown ``b`` within ``base``."""
        base = base & self.mask(b.where)
        if b.by is None:
            return [(None, base)]
        values = b.values
        if values is None:
            col = self._column(b.by).to_list()
            values = tuple(sorted({v for v, keep in zip(col, base) if keep}))
        return [(v, base & self.mask({b.by: v})) for v in values]


def _plain(x: Any) -> Any:
    """numpy scalars and 0-d arrays as Python numbers (JSON)."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.floating, np.ndarray)):
        return float(x)
    return x


def _value(metric: Metric, cols: _Columns, mask: np.ndarray) -> Any:
    arrays = cols.inputs(metric, mask)
    return metric.empty if arrays is None else _plain(metric.stat(*arrays, axis=-1))


def metric_inputs(
    bench: Benchmark, rows: pl.DataFrame, metric: str, *, codes_from: pl.DataFrame | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
    """(row mask, the column arrays) that ``bench.metrics[metric]`` aggregates over ``rows``.

    The one path from a rows table to a metric's inputs: metrics, breakdowns, CIs and the
    intervention stages' paired tests all read through it. ``codes_from``: code string columns
    over another table of the same items (see ``_Columns``). The arrays are None when no row
    passes the metric's filter.
    """
    if metric not in bench.metrics:
        raise RoutelabError(f"{bench.name} has no metric '{metric}' (metrics: {', '.join(bench.metrics)})")
    cols = _Columns(bench, rows, codes_from)
    m = bench.metrics[metric]
    keep = cols.mask(m.where)  # (N,)
    return keep, cols.inputs(m, cols.everything)


def metric_clusters(bench: Benchmark, rows: pl.DataFrame, metric: str) -> np.ndarray | None:
    """The cluster label of each row ``metric`` aggregates (aligned with :func:`metric_inputs`), or None."""
    cols = _Columns(bench, rows)
    return cols.clusters(cols.mask(bench.metrics[metric].where))


def _block(bench: Benchmark, cols: _Columns, mask: np.ndarray, breakdowns: Sequence[Breakdown]) -> Metrics:
    out: Metrics = {"n": int(mask.sum())}
    out.update({name: _value(m, cols, mask) for name, m in bench.metrics.items()})
    for b in breakdowns:
        blocks = {g: _block(bench, cols, m, b.inner) for g, m in cols.parts(b, mask)}
        if b.by is None:
            out[b.key] = blocks[None]
        elif b.key is None:
            out.update(blocks)
        else:
            out[b.key] = blocks
    return out


def metrics_from_rows(bench: Benchmark, rows: pl.DataFrame) -> Metrics:
    """Every metric of ``bench`` on the rows table, every breakdown, and ``data_quality``.

    Each block holds ``n`` (its rows) and one value per metric (``Metric.empty`` when no row
    passes the metric's filter). No CIs: see :func:`bootstrap_cis`.
    """
    cols = _Columns(bench, rows)
    out = _block(bench, cols, cols.everything, bench.breakdowns)
    if bench.data_quality is not None:
        out["data_quality"] = bench.data_quality(rows)
    return out


def _ci(metric: Metric, cols: _Columns, mask: np.ndarray, seed: int, n_bootstrap: int) -> list[float] | None:
    arrays = cols.inputs(metric, mask)
    if arrays is None:
        return None
    clusters = cols.clusters(mask & cols.mask(metric.where))
    res = bootstrap_ci(arrays, metric.stat, n_resamples=n_bootstrap, seed=seed, clusters=clusters)
    return [res.low, res.high]


def bootstrap_cis(
    bench: Benchmark, rows: pl.DataFrame, *, seed: int = 0, n_bootstrap: int = N_BOOTSTRAP
) -> dict[str, list[float] | None]:
    """Percentile bootstrap 95 % CIs (items resampled, ``seed``) of the headline metrics and of
    the breakdown metrics listed in ``Breakdown.ci`` (keys ``<block>.<metric>``)."""
    cols = _Columns(bench, rows)
    out = {name: _ci(bench.metrics[name], cols, cols.everything, seed, n_bootstrap) for name in bench.headline}

    def walk(breakdowns: Sequence[Breakdown], mask: np.ndarray, prefix: str) -> None:
        for b in breakdowns:
            for g, m in cols.parts(b, mask):
                label = prefix + (b.key if b.by is None else str(g) if b.key is None else f"{b.key}.{g}")
                for name in b.ci:
                    out[f"{label}.{name}"] = _ci(bench.metrics[name], cols, m, seed, n_bootstrap)
                walk(b.inner, m, label + ".")

    walk(bench.breakdowns, cols.everything, "")
    return out


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def run_benchmark(
    model: Any,
    tokenizer: Any,
    bench: Benchmark,
    data_path: str | Path | None = None,
    hub: bool = False,
    split_ids: Iterable[str] | None = None,
    primer_path: str | Path | None = None,
    batch_size: int = 16,
    seed: int = 0,
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    max_length: int | None = None,
    progress: bool = True,
    items: Sequence[Item] | None = None,
    description: str | None = None,
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    **load_options: Any,
) -> tuple[Metrics, pl.DataFrame]:
    """Score one benchmark on a loaded model; return (metrics, the per-item table).

    ``split_ids`` restricts to those item ids (a split from routelab.benchmarks.splits).
    ``items`` skips loading. ``max_logits_bytes``: see routelab.scoring.score_tokens. Metrics hold :func:`metrics_from_rows`, ``ci95`` (bootstrap 95 %
    CIs, ``n_bootstrap`` resamples seeded with ``seed``), ``bootstrap``, ``seed``,
    ``benchmark``, ``n_items`` and ``source``.
    """
    source = "items passed in"
    if items is None:
        src = resolve_source(bench, data_path, hub)
        items = load_items(bench, src, primer_path=primer_path, **load_options)
        source = source_label(src)
    items = list(items)
    if split_ids is not None:
        items = select_items(items, split_ids)
    if not items:
        raise RoutelabError(f"{bench.name}: no items to score (empty data or empty split)")
    lls = item_lls(model, tokenizer, bench, items, batch_size=batch_size, max_length=max_length, progress=progress,
                   description=description, max_logits_bytes=max_logits_bytes)
    rows = item_rows(bench, items, lls)
    metrics = metrics_from_rows(bench, rows)
    metrics["ci95"] = bootstrap_cis(bench, rows, seed=seed, n_bootstrap=n_bootstrap)
    metrics["bootstrap"] = {
        "n_resamples": int(n_bootstrap),
        "confidence": CONFIDENCE,
        "method": "percentile",
        "seed": int(seed),
    }
    metrics["seed"] = int(seed)
    metrics["benchmark"] = bench.name
    metrics["n_items"] = len(items)
    metrics["source"] = source
    return metrics, rows
