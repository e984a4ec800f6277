"""Statistics for before/after claims (docs/method.md §9).

Usage::

    from routelab.statistics import paired_permutation_test, bootstrap_ci, benjamini_hochberg
    res = paired_permutation_test(after, before, seed=0)        # 10,000 sign flips
    ci = bootstrap_ci(values, seed=0)                           # 1,000 resamples, 95 %
    adj = benjamini_hochberg({"crows": 0.01, "tqa": 0.04})     # BH across the family
    cmp = compare_paired((before_pref,), (after_pref,), mean_stat, seed=0)   # any metric
    rows = with_bh([cmp_a, cmp_b, ...])                         # p_bh across a stage's family

Everything is built on scipy.stats (``permutation_test``, ``bootstrap``,
``false_discovery_control``) and pingouin (paired effect size): no hand-written resampling
loops. Every result records its seed and resample count and serialises to JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pingouin
import scipy.stats

from routelab.errors import RoutelabError

N_PERMUTATIONS = 10_000  # docs/method.md §9: paired permutation test, 10,000 permutations
N_BOOTSTRAP = 1_000  # docs/method.md §9: bootstrap 95 % CI, 1,000 resamples
CONFIDENCE = 0.95
# Equivalence margins per metric (TOST, docs/method.md §9) when params.yaml gives none: a preference
# within ±0.05 of where it was is "no change" (a tenth of the way from parity to certainty).
# params.yaml sets 0.1 for the testbeds' smaller, clustered test split (its comment says why).
EQUIVALENCE_MARGINS = {"pct_stereotype": 0.05, "pct_stereotype_after": 0.05, "own_share": 0.05}


@dataclass(frozen=True)
class PermutationResult:
    """A paired permutation test of mean(a − b) = 0."""

    statistic: float  # observed mean difference mean(a - b)
    p_value: float
    n: int  # number of pairs
    n_resamples: int  # permutations asked for (scipy runs the exact test when 2**n is smaller)
    seed: int
    alternative: str  # "two-sided", "greater" (a > b) or "less"
    test: str = "paired permutation (sign flips), scipy.stats.permutation_test"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BootstrapCI:
    """A bootstrap confidence interval around a point estimate."""

    estimate: float  # the statistic on the original sample
    low: float
    high: float
    confidence: float
    n: int  # sample size (items)
    n_resamples: int
    seed: int
    method: str  # scipy.stats.bootstrap method: "percentile", "basic" or "BCa"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BHResult:
    """Benjamini–Hochberg adjusted p-values for a family of tests."""

    names: list[str]
    p_values: list[float]
    adjusted: list[float]
    rejected: list[bool]  # adjusted p <= alpha
    alpha: float
    method: str = "Benjamini-Hochberg, scipy.stats.false_discovery_control(method='bh')"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_1d(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise RoutelabError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise RoutelabError(f"{name} is empty: a test needs at least one item")
    if not np.all(np.isfinite(arr)):
        raise RoutelabError(f"{name} holds NaN or infinite values: clean or drop those items first")
    return arr


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = N_PERMUTATIONS,
    seed: int = 0,
    alternative: str = "two-sided",
) -> PermutationResult:
    """Paired permutation test of mean(a − b) (docs/method.md §9: every before/after claim).

    ``a[i]`` and ``b[i]`` are the same item under two conditions (e.g. a CrowS pair's
    stereotype preference after vs before an intervention). Under H0 the labels within a pair
    are exchangeable, so scipy swaps them (``permutation_type='samples'``) ``n_resamples``
    times, or enumerates all 2**n swaps when that is fewer.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise RoutelabError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.shape != y.shape:
        raise RoutelabError(f"paired samples differ in length: a has {x.size}, b has {y.size} items")
    res = scipy.stats.permutation_test(
        (x, y),
        _mean_diff,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        rng=np.random.default_rng(seed),
    )
    return PermutationResult(
        statistic=float(res.statistic),
        p_value=float(min(1.0, res.pvalue)),
        n=int(x.size),
        n_resamples=int(n_resamples),
        seed=int(seed),
        alternative=alternative,
    )


def bootstrap_ci(
    data: Sequence[float] | np.ndarray | tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray] | None = None,
    *,
    n_resamples: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
    clusters: Sequence[Any] | np.ndarray | None = None,
) -> BootstrapCI:
    """Bootstrap CI of ``statistic`` over items (docs/method.md §9: 1,000 resamples, 95 %).

    ``data`` is one array of per-item values, or a tuple of equally long arrays resampled
    together (items stay intact: e.g. (n_biased, n_nonunknown) for a ratio). ``statistic``
    takes those arrays and ``axis`` and is vectorised (default: the mean of one array).
    ``clusters`` (one label per item): whole clusters are resampled (items of a cluster are not
    independent). A degenerate sample (every resample gives the same value) yields low = high
    = estimate.
    """
    arrays = tuple(np.asarray(d, dtype=float) for d in data) if isinstance(data, tuple) else (
        np.asarray(data, dtype=float),
    )
    n = arrays[0].shape[-1] if arrays[0].ndim else 0
    if n == 0 or any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise RoutelabError(
            "bootstrap_ci needs one or more non-empty 1-D arrays of equal length, got shapes "
            f"{[a.shape for a in arrays]}"
        )
    if statistic is None:
        if len(arrays) != 1:
            raise RoutelabError("bootstrap_ci: pass a statistic when resampling several arrays together")
        statistic = lambda x, axis=-1: np.mean(x, axis=axis)  # noqa: E731
    estimate = float(statistic(*arrays, axis=-1))
    codes = _cluster_codes(clusters, n)
    units = n if codes is None else int(codes.max() + 1)
    if units < 2:
        low = high = estimate
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            if codes is None:
                res = scipy.stats.bootstrap(
                    arrays, statistic, n_resamples=n_resamples, vectorized=True, paired=len(arrays) > 1,
                    confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
                )  # fmt: skip
            else:
                rows_of = [np.flatnonzero(codes == c) for c in range(units)]  # C x (n_c,)

                def resampled(drawn: np.ndarray) -> float:
                    rows = np.concatenate([rows_of[int(c)] for c in drawn])  # (n*,) the drawn clusters' rows
                    return float(statistic(*(a[rows] for a in arrays), axis=-1))

                res = scipy.stats.bootstrap(
                    (np.arange(units),), resampled, n_resamples=n_resamples, vectorized=False,
                    confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
                )  # fmt: skip
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(low) and np.isfinite(high)):  # degenerate sample: no spread
            low = high = estimate
    return BootstrapCI(
        estimate=estimate,
        low=low,
        high=high,
        confidence=float(confidence),
        n=int(n),
        n_resamples=int(n_resamples),
        seed=int(seed),
        method=method,
    )


def benjamini_hochberg(
    p_values: Mapping[str, float] | Sequence[float], *, alpha: float = 0.05
) -> BHResult:
    """Benjamini–Hochberg adjustment across a family of tests (docs/method.md §9).

    Pass a mapping name → p (or a list; names become "0", "1", …). The adjusted values are
    scipy's ``false_discovery_control(ps, method='bh')``.
    """
    if isinstance(p_values, Mapping):
        names = [str(k) for k in p_values]
        ps = np.asarray(list(p_values.values()), dtype=float)
    else:
        ps = np.asarray(list(p_values), dtype=float)
        names = [str(i) for i in range(ps.size)]
    if ps.size == 0:
        raise RoutelabError("benjamini_hochberg: the family of tests is empty")
    if np.any(~np.isfinite(ps)) or np.any(ps < 0) or np.any(ps > 1):
        raise RoutelabError(f"benjamini_hochberg: p-values must lie in [0, 1], got {ps.tolist()}")
    adjusted = scipy.stats.false_discovery_control(ps, method="bh")
    return BHResult(
        names=names,
        p_values=[float(p) for p in ps],
        adjusted=[float(q) for q in adjusted],
        rejected=[bool(q <= alpha) for q in adjusted],
        alpha=float(alpha),
    )


# --------------------------------------------------------------------------------------------
# Paired comparison of one metric under two conditions (any aggregation of per-item columns)
# --------------------------------------------------------------------------------------------

Stat = Callable[..., np.ndarray]  # stat(*columns, axis=-1) -> value, vectorised over leading axes


def mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean of one per-item column (the statistic of most benchmark metrics)."""
    return np.mean(x, axis=axis)


@dataclass(frozen=True)
class Comparison:
    """One metric under a condition vs a reference (the baseline, or another condition), paired
    over the same items (docs/method.md §9)."""

    metric: str
    before: float  # metric on the reference's per-item rows (the baseline unless ``reference`` says)
    after: float  # metric on the condition's per-item rows (same items)
    delta: float  # after − before
    p: float  # paired permutation p (two-sided), swaps of each item's (or cluster's) two values
    ci_low: float  # bootstrap 95 % CI of delta (items, or whole clusters, resampled; pairs kept)
    ci_high: float
    effect: float | None  # Cohen's d_av for paired samples (pingouin); None for non-mean metrics
    n: int  # items
    n_permutations: int
    n_bootstrap: int
    seed: int
    p_bh: float | None = None  # Benjamini–Hochberg across the stage's family (with_bh)
    benchmark: str = ""  # where the metric comes from
    condition: str = ""  # the condition compared
    reference: str = "baseline"  # what it is compared with: the unedited model or another condition
    n_clusters: int | None = None  # resampling units when the benchmark declares clusters (None: items)
    margin: float | None = None  # equivalence margin m (statistics.equivalence_margins) when the metric has one
    p_tost: float | None = None  # TOST p of |Δ| < m: the larger of the two one-sided bootstrap p-values
    equivalent: bool | None = None  # p_tost < alpha: "no change beyond ±m" is shown, not just not rejected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cluster_codes(clusters: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Integer codes 0..C-1 of per-item cluster labels (None: every item its own unit)."""
    if clusters is None:
        return None
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise RoutelabError(f"compare_paired: clusters must give one label per item ({n}), got shape {labels.shape}")
    _, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes.astype(np.int64)  # (n,)


def _tost(boot_distribution: np.ndarray | None, delta: float, margin: float | None,
          alpha: float) -> tuple[float | None, bool | None]:  # fmt: skip
    """Two one-sided tests of |Δ| < margin from the bootstrap distribution of Δ (docs/method.md §9).

    Each one-sided p is the share of resamples on the wrong side of its bound, (1 + #)/(B + 1):
    the test the percentile interval inverts, so "equivalent" ⇔ the (1 − 2α) interval lies
    inside ±margin. No spread (every resample equal) is judged by Δ itself.
    """
    if margin is None:
        return None, None
    if boot_distribution is None or not np.all(np.isfinite(boot_distribution)):
        inside = abs(delta) < margin
        return (0.0 if inside else 1.0), inside
    B = boot_distribution.size
    p_low = (1 + np.count_nonzero(boot_distribution <= -margin)) / (B + 1)  # H0: Δ ≤ −m
    p_high = (1 + np.count_nonzero(boot_distribution >= margin)) / (B + 1)  # H0: Δ ≥ +m
    p = float(max(p_low, p_high))
    return p, p < alpha


def compare_paired(
    before: tuple[np.ndarray, ...],
    after: tuple[np.ndarray, ...],
    stat: Stat = mean_stat,
    *,
    metric: str = "",
    benchmark: str = "",
    condition: str = "",
    reference: str = "baseline",
    clusters: Sequence[Any] | np.ndarray | None = None,
    margin: float | None = None,
    alpha: float = 0.05,
    n_permutations: int = N_PERMUTATIONS,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> Comparison:
    """Compare ``stat`` of per-item columns under two conditions, item by item.

    ``before[j][i]`` and ``after[j][i]`` are column j of item i under the reference and the
    condition (same items, same order). The statistic may be any vectorised aggregation of
    the columns (a mean, a ratio of sums such as token-weighted perplexity, a term-macro
    average), so the test works by index: under H0 each item's two rows are exchangeable, and
    a permutation swaps them (scipy ``permutation_type="samples"``) before recomputing
    stat(after rows) − stat(before rows).

    ``clusters`` (one label per item): items of a cluster are not independent (a testbed unit's
    three frames, a BBQ template's items), so the permutation swaps whole clusters and the
    bootstrap resamples whole clusters. ``margin``: also run the equivalence test (TOST) of
    |Δ| < margin at ``alpha`` (:func:`_tost`).
    """
    if len(before) != len(after) or not before:
        raise RoutelabError("compare_paired: give the same non-empty set of columns before and after")
    cols_b = [_as_1d(c, f"before column {j}") for j, c in enumerate(before)]
    cols_a = [_as_1d(c, f"after column {j}") for j, c in enumerate(after)]
    n = cols_b[0].size
    if any(c.size != n for c in cols_b + cols_a):
        raise RoutelabError(f"compare_paired: columns differ in length ({[c.size for c in cols_b + cols_a]})")
    codes = _cluster_codes(clusters, n)
    before_v = float(stat(*cols_b, axis=-1))
    after_v = float(stat(*cols_a, axis=-1))
    rng_p, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    one_mean = stat is mean_stat and len(cols_b) == 1
    with np.errstate(invalid="ignore", divide="ignore"):
        if codes is None and one_mean:
            perm, boot = _sign_flips(cols_a[0] - cols_b[0], n_permutations, n_bootstrap, rng_p, rng_b)
        elif codes is None:
            perm, boot = _row_swaps(cols_b, cols_a, stat, n_permutations, n_bootstrap, rng_p, rng_b)
        elif one_mean:
            perm, boot = _cluster_sign_flips(cols_a[0] - cols_b[0], codes, n_permutations, n_bootstrap, rng_p, rng_b)
        else:
            perm, boot = _cluster_swaps(cols_b, cols_a, codes, stat, n_permutations, n_bootstrap, rng_p, rng_b)
    lo, hi = (float(boot.confidence_interval.low), float(boot.confidence_interval.high)) if boot else (np.nan, np.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # no spread: every resample gives the same Δ
        lo = hi = after_v - before_v
    p_tost, equivalent = _tost(boot.bootstrap_distribution if boot else None, after_v - before_v, margin, alpha)
    effect = None
    if one_mean and np.ptp(np.concatenate([cols_b[0], cols_a[0]])) > 0:
        effect = float(pingouin.compute_effsize(cols_a[0], cols_b[0], paired=True, eftype="cohen"))
    return Comparison(
        metric=metric, before=before_v, after=after_v, delta=after_v - before_v,
        p=float(min(1.0, perm.pvalue)), ci_low=lo, ci_high=hi,
        effect=effect if effect is None or np.isfinite(effect) else None,
        n=int(n), n_permutations=int(n_permutations), n_bootstrap=int(n_bootstrap), seed=int(seed),
        benchmark=benchmark, condition=condition, reference=reference,
        n_clusters=None if codes is None else int(codes.max() + 1), margin=margin, p_tost=p_tost,
        equivalent=equivalent,
    )  # fmt: skip


# The four resampling schemes of compare_paired: (permutation result, bootstrap result or None).


def _sign_flips(d, n_permutations, n_bootstrap, rng_p, rng_b):
    """A mean of one column: swapping an item's two values flips the sign of its difference, so
    scipy's one-sample sign-flip test on d = after − before is the same test, without gathering
    (B, n) index arrays."""
    n = d.size  # d: (n,)
    perm = scipy.stats.permutation_test(
        (d,), mean_stat, permutation_type="samples", vectorized=True, n_resamples=n_permutations,
        alternative="two-sided", rng=rng_p,
    )  # fmt: skip
    boot = (scipy.stats.bootstrap((d,), mean_stat, vectorized=True, n_resamples=n_bootstrap,
                                  confidence_level=CONFIDENCE, method="percentile", rng=rng_b)
            if n >= 2 else None)  # fmt: skip
    return perm, boot


def _row_swaps(cols_b, cols_a, stat, n_permutations, n_bootstrap, rng_p, rng_b):
    """Any statistic: permute by index into the stacked (before rows, after rows)."""
    n = cols_b[0].size
    stacked = [np.concatenate([b, a]) for b, a in zip(cols_b, cols_a)]  # (2n,): before rows, then after rows

    def diff(ix: np.ndarray, iy: np.ndarray, axis: int = -1) -> np.ndarray:
        ix, iy = ix.astype(np.int64), iy.astype(np.int64)  # (..., n) row indices into `stacked`
        return stat(*(c[iy] for c in stacked), axis=-1) - stat(*(c[ix] for c in stacked), axis=-1)

    idx_b, idx_a = np.arange(n), np.arange(n) + n
    perm = scipy.stats.permutation_test(
        (idx_b, idx_a), diff, permutation_type="samples", vectorized=True,
        n_resamples=n_permutations, alternative="two-sided", rng=rng_p,
    )  # fmt: skip
    boot = (scipy.stats.bootstrap((idx_b, idx_a), diff, paired=True, vectorized=True, n_resamples=n_bootstrap,
                                  confidence_level=CONFIDENCE, method="percentile", rng=rng_b)
            if n >= 2 else None)  # fmt: skip
    return perm, boot


def _cluster_sign_flips(d, codes, n_permutations, n_bootstrap, rng_p, rng_b):
    """A mean of one column over clusters: Δ = Σ_c S_c / n with S_c the cluster's summed
    differences; flipping whole clusters is scipy's sign-flip test on S, and a cluster
    resample's Δ is Σ S_c / Σ n_c over the drawn clusters."""
    n = d.size
    sums = np.bincount(codes, weights=d)  # (C,) S_c
    sizes = np.bincount(codes).astype(float)  # (C,) n_c
    perm = scipy.stats.permutation_test(
        (sums,), lambda s, axis=-1: np.sum(s, axis=axis) / n, permutation_type="samples", vectorized=True,
        n_resamples=n_permutations, alternative="two-sided", rng=rng_p,
    )  # fmt: skip
    boot = (scipy.stats.bootstrap((sums, sizes), lambda s, m, axis=-1: np.sum(s, axis=axis) / np.sum(m, axis=axis),
                                  paired=True, vectorized=True, n_resamples=n_bootstrap, confidence_level=CONFIDENCE,
                                  method="percentile", rng=rng_b)
            if sums.size >= 2 else None)  # fmt: skip
    return perm, boot


def _cluster_swaps(cols_b, cols_a, codes, stat, n_permutations, n_bootstrap, rng_p, rng_b):
    """Any statistic over clusters. Permutation: scipy swaps cluster c's (before, after) labels;
    each row takes its cluster's swap. Bootstrap: clusters drawn with replacement, their rows
    concatenated (scipy calls the statistic once per resample: rows per resample vary)."""
    C = int(codes.max() + 1)
    rows_of = [np.flatnonzero(codes == c) for c in range(C)]  # C x (n_c,)

    def diff(cb: np.ndarray, ca: np.ndarray, axis: int = -1) -> np.ndarray:
        swapped = np.asarray(ca) < C  # (..., C): cluster's after-label now holds its before rows
        rows_swapped = swapped[..., codes]  # (..., n)
        after = [np.where(rows_swapped, b, a) for b, a in zip(cols_b, cols_a)]  # (..., n) each
        before = [np.where(rows_swapped, a, b) for b, a in zip(cols_b, cols_a)]
        return stat(*after, axis=-1) - stat(*before, axis=-1)

    perm = scipy.stats.permutation_test(
        (np.arange(C), np.arange(C) + C), diff, permutation_type="samples", vectorized=True,
        n_resamples=n_permutations, alternative="two-sided", rng=rng_p,
    )  # fmt: skip

    def resampled(drawn: np.ndarray) -> float:
        rows = np.concatenate([rows_of[int(c)] for c in drawn])  # (n*,)
        return float(stat(*(a[rows] for a in cols_a), axis=-1) - stat(*(b[rows] for b in cols_b), axis=-1))

    boot = (scipy.stats.bootstrap((np.arange(C),), resampled, vectorized=False, n_resamples=n_bootstrap,
                                  confidence_level=CONFIDENCE, method="percentile", rng=rng_b)
            if C >= 2 else None)  # fmt: skip
    return perm, boot


def with_bh(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """The same comparisons with ``p_bh``: Benjamini–Hochberg across them (one stage's family)."""
    if not comparisons:
        return []
    adj = benjamini_hochberg([c.p for c in comparisons], alpha=alpha)
    return [replace(c, p_bh=q) for c, q in zip(comparisons, adj.adjusted)]


@dataclass
class StatsParams:
    """The ``statistics:`` section of params.yaml: every before/after test of the intervention stages."""

    n_permutations: int = N_PERMUTATIONS  # paired permutation test resamples (docs/method.md §9: 10,000)
    n_bootstrap: int = N_BOOTSTRAP  # bootstrap resamples of the CI of Δ (1,000)
    alpha: float = 0.05  # significance level after Benjamini–Hochberg (and of the equivalence tests)
    seed: int = 0  # permutation and bootstrap RNG
    equivalence_margins: dict[str, float] = field(default_factory=lambda: dict(EQUIVALENCE_MARGINS))  # metric -> m

    def __post_init__(self) -> None:
        if self.n_permutations < 1 or self.n_bootstrap < 1:
            raise RoutelabError(
                f"statistics.n_permutations and statistics.n_bootstrap must be >= 1, found "
                f"{self.n_permutations}, {self.n_bootstrap}"
            )
        if not 0 < self.alpha < 1:
            raise RoutelabError(f"statistics.alpha must be in (0, 1), found {self.alpha}")
        bad = {k: v for k, v in self.equivalence_margins.items() if not (np.isfinite(v) and v > 0)}
        if bad:
            raise RoutelabError(f"statistics.equivalence_margins: every margin must be a finite number > 0, found {bad}")

    def margin(self, metric: str) -> float:
        """The declared equivalence margin of ``metric`` (``statistics.equivalence_margins``)."""
        if metric not in self.equivalence_margins:
            raise RoutelabError(
                f"statistics.equivalence_margins has no margin for '{metric}' (it has {sorted(self.equivalence_margins)}): "
                f"add `{metric}: <m>` under statistics.equivalence_margins in params.yaml"
            )
        return float(self.equivalence_margins[metric])
