"""The benchmark record, its metric and breakdown records, and the loaders' shared error kit.

A benchmark (one file in this package) is data plus three small functions::

    load(source, **options) -> items       # source: a local Path or a HubSource
    requests(item) -> [(context, continuation), ...]   # or [text] for a rolling benchmark
    per_item(item, lls) -> row             # lm-eval's process_results: one row of the items table

and its ``METRICS``: named aggregations over columns of the items table (lm-eval's
``metric_list``). routelab.benchmarks.engine runs them all the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import datasets
import numpy as np
import polars as pl

from routelab.errors import RoutelabError
from routelab.scoring import LL
from routelab.statistics import mean_stat

Item = dict[str, Any]  # one benchmark item as loaded; always has a unique string "id"
Row = dict[str, Any]  # one row of the per-item results table (routelab.tables: per-item results)
Output = Literal["loglikelihood", "rolling", "generation"]

# The project root: the folder above src/ that holds dvc.yaml (the package is installed editable);
# else the current directory. Defaults resolve against it, so `routelab bench` finds them from anywhere.
_SRC_ROOT = Path(__file__).resolve().parents[3]
PROJECT_ROOT = _SRC_ROOT if (_SRC_ROOT / "dvc.yaml").is_file() else Path.cwd()
BENCHMARK_ROOT = PROJECT_ROOT.parent / "shared" / "benchmarks"  # local copies: ../shared beside the project


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hugging Face Hub (``datasets.load_dataset`` arguments)."""

    id: str
    config: str | None
    split: str
    revision: str | None = None  # e.g. "refs/convert/parquet" for script-only datasets


Source = Path | HubSource  # a benchmark loads from exactly one of them


def source_label(source: Source) -> str:
    """How a source is written in the metrics (``source``): the path, or ``hub:<id>``."""
    return f"hub:{source.id}" if isinstance(source, HubSource) else str(source)


@dataclass(frozen=True)
class Metric:
    """A named aggregation over columns of the items table (lm-eval's ``metric_list`` entry).

    The engine selects the rows that pass ``where`` (column → required value, all must hold),
    takes the ``columns`` of those rows as numpy arrays (string columns as integer codes over
    the whole table) and calls ``stat(*arrays, axis=-1)``. ``stat`` is vectorised along
    ``axis`` so scipy.stats.bootstrap can resample it: the point value, a breakdown and the
    bootstrap CI are the same aggregation of the same rows.
    """

    columns: tuple[str, ...]
    stat: Callable[..., Any]
    where: Mapping[str, Any] = field(default_factory=dict)
    empty: Any = None  # the value when no row passes `where` (None = undefined; 0 for counts)


@dataclass(frozen=True)
class Breakdown:
    """Every metric again on part of the items table (a block with its own ``n``).

    ``by`` None: one block of the rows that pass ``where``, under ``key``. ``by`` a column: one
    block per value (``values`` in that order and shown even when empty; None = the values
    present, sorted) under ``key``, or at the top level under the value itself when ``key`` is
    None. ``ci``: metrics of these blocks that get a bootstrap CI, keyed ``<block>.<metric>``
    in ``ci95``. ``inner``: breakdowns inside each block.
    """

    key: str | None
    by: str | None = None
    where: Mapping[str, Any] = field(default_factory=dict)
    values: tuple[str, ...] | None = None
    ci: tuple[str, ...] = ()
    inner: tuple["Breakdown", ...] = ()


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its data lives, how it is scored, and which numbers it reports."""

    name: str  # registry key, params key (bench_baseline.paths.<name>) and file prefix
    description: str
    output: Output  # loglikelihood: (context, continuation) options; rolling: whole texts; generation: decoded text
    load: Callable[..., list[Item]]  # load(source: Path | HubSource, **options) -> items
    requests: Callable[[Item], list[Any]] | None  # loglikelihood: [(context, continuation)]; rolling/generation: [text]
    per_item: Callable[..., Row] | None  # (item, one LL per request) -> row; generation: (item, samples) -> row
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    headline: tuple[str, ...] = ()  # metrics with a bootstrap 95 % CI over the whole table
    summary: str | None = None  # the one number of a stage's summary line
    breakdowns: tuple[Breakdown, ...] = ()
    data_quality: Callable[[pl.DataFrame], dict[str, Any]] | None = None  # items table -> counts
    default_path: Path | None = None  # local copy used when no path is given
    hub: HubSource | None = None  # used when there is no local path (or the Hub is asked for)
    stratify_key: str | None = None  # item field the validation/test split is stratified by
    cluster_key: str | None = None  # item field grouping items that are not independent (a template's items):
    # splits keep a cluster on one side; CIs and permutation tests resample whole clusters (items without it: own unit)
    short: str = ""  # a short name for metrics keys and tables (crows, tqa, ppl); default: the name
    options: Mapping[str, Any] = field(default_factory=dict)  # loader options and defaults (bench_baseline.options.<name>)
    needs_primer: bool = False  # the loader takes a few-shot primer file (bench_baseline.primer, --primer)
    classifiers: tuple[str, ...] = ()  # generation: text classifiers applied to each continuation (routelab.classifiers)
    sample_scores: Callable[[Item, str], dict[str, Any]] | None = None  # generation: the protocol's own scores of one continuation
    builtin: bool = False  # the items are generated by ``load(**options)`` (no file, no Hub)
    model_owned: bool = False  # only a model brings its file (models.<name>.benchmarks: the testbed's own sets)
    token_level: bool = False  # its LLs carry each continuation token's log p and id (LL.token_logprobs, LL.tokens)

    @property
    def key(self) -> str:
        """The short name used in metrics keys."""
        return self.short or self.name

    @property
    def scored(self) -> bool:
        """Whether the engine can score it today (generation benchmarks come later)."""
        return self.per_item is not None and self.output != "generation"


# --------------------------------------------------------------------------------------------
# Statistics shared by several benchmarks (vectorised along `axis`)
# --------------------------------------------------------------------------------------------


mean = mean_stat  # the mean of one column; statistics.compare_paired has a sign-flip fast path for it


def count(x: np.ndarray, axis: int = -1) -> int:
    """Number of rows (for ``n_*`` fields; never bootstrapped)."""
    return int(np.shape(x)[axis])


def total(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(x, axis=axis)


def split_at_difference(a: LL, b: LL) -> tuple[float, float, int]:
    """(LL_span(a), LL_after(a), n_after) of sentence a against sentence b: ``n_after`` is the
    number of tokens both end with after the tokens where they differ (their common suffix,
    never overlapping the common prefix); LL_after sums a's log-probabilities over them, LL_span
    the rest (the common prefix + the differing span). Needs token-level LLs (``token_level``)."""
    if a.tokens is None or b.tokens is None or a.token_logprobs is None:
        raise RoutelabError("the CrowS decomposition needs token-level log-likelihoods (token_level=True)")
    ta, tb = a.tokens, b.tokens
    prefix = 0
    while prefix < min(len(ta), len(tb)) and ta[prefix] == tb[prefix]:
        prefix += 1
    n_after = 0
    while n_after < min(len(ta), len(tb)) - prefix and ta[-1 - n_after] == tb[-1 - n_after]:
        n_after += 1
    after = float(sum(a.token_logprobs[len(ta) - n_after :])) if n_after else 0.0
    return a.logprob - after, after, n_after


# --------------------------------------------------------------------------------------------
# Loader error kit: every message names the file, the place in it, and what was expected
# --------------------------------------------------------------------------------------------


def missing(benchmark: str, path: Path, expected: str) -> RoutelabError:
    """A local file that is not there."""
    return RoutelabError(
        f"{benchmark}: file {path} not found (expected {expected}). Point bench_baseline.paths.{benchmark} "
        f"(or the model's models.<name>.benchmarks.{benchmark}; routelab bench: --data) at a local copy, "
        "or load it from the Hub (bench_baseline.hub: true; routelab bench: --hub)"
    )


def malformed(benchmark: str, path: Path | str, where: str, problem: str, expected: str) -> RoutelabError:
    """A file that is there but not in the benchmark's format."""
    return RoutelabError(
        f"{benchmark}: {path}: {where}: {problem}. Expected {expected}. Is this the right file "
        "for this benchmark?"
    )


def require(
    row: Mapping[str, Any], fields: Sequence[str], benchmark: str, path: Path | str, where: str, expected: str
) -> None:
    """``row`` is a mapping holding every one of ``fields`` (not None)."""
    if not isinstance(row, Mapping):
        raise malformed(benchmark, path, where, f"found {type(row).__name__}, not an object", expected)
    absent = [f for f in fields if f not in row or row[f] is None]
    if absent:
        raise malformed(benchmark, path, where, f"missing field(s) {', '.join(absent)}", expected)


def unique_ids(items: Sequence[Item], benchmark: str, path: Path | str) -> None:
    seen: set[str] = set()
    for it in items:
        if it["id"] in seen:
            raise malformed(benchmark, path, f"id {it['id']}", "duplicate id", "unique item ids")
        seen.add(it["id"])


def not_utf8(benchmark: str, path: Path | str, exc: UnicodeDecodeError, expected: str) -> RoutelabError:
    """A file that is not UTF-8 text (a binary file such as a Parquet, or another encoding)."""
    byte = exc.object[exc.start : exc.start + 1].hex()
    return malformed(benchmark, path, f"byte {exc.start}", f"not UTF-8 text (0x{byte})", expected)


def read_json(path: Path, benchmark: str, expected: str) -> Any:
    """A JSON file, or a missing / malformed error naming it."""
    if not path.is_file():
        raise missing(benchmark, path, expected)
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise malformed(benchmark, path, f"line {exc.lineno}", f"not valid JSON ({exc.msg})", expected) from None
    except UnicodeDecodeError as exc:
        raise not_utf8(benchmark, path, exc, expected) from None


def hub_rows(source: HubSource, benchmark: str) -> list[dict[str, Any]]:
    """Rows of a Hub dataset as plain dicts; top-level ClassLabel columns decoded to names."""
    try:
        ds = datasets.load_dataset(source.id, source.config, split=source.split, revision=source.revision)
    except Exception as exc:  # network, offline mode, auth, missing config: all end the same way
        raise RoutelabError(
            f"{benchmark}: could not load {source.id} (config {source.config!r}, split {source.split!r}, "
            f"revision {source.revision!r}) from the Hugging Face Hub: {type(exc).__name__}: {exc}. "
            f"Offline? Point bench_baseline.paths.{benchmark} (routelab bench: --data) at a local copy, "
            "or remove it from bench_baseline.benchmarks"
        ) from exc
    rows = ds.to_list()
    for col, feat in ds.features.items():
        if isinstance(feat, datasets.ClassLabel):
            for r in rows:
                if isinstance(r[col], int):
                    r[col] = feat.int2str(r[col])
    return rows


def sample_means(samples: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """Per generation protocol item: the mean over its samples of each score in ``keys`` that the
    samples carry (a classifier that was skipped leaves no column)."""
    return {k: float(np.mean([s[k] for s in samples])) for k in keys if samples and k in samples[0]}
