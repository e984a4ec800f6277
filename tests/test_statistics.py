"""Permutation test, bootstrap CI and Benjamini–Hochberg on cases with known answers.

Run: .venv/bin/pytest tests/test_statistics.py
"""

from __future__ import annotations

import json

from itertools import product

import numpy as np
import pytest

from routelab.errors import RoutelabError
from routelab.statistics import (
    N_BOOTSTRAP,
    N_PERMUTATIONS,
    benjamini_hochberg,
    bootstrap_ci,
    paired_permutation_test,
)


def test_defaults_match_method():
    assert N_PERMUTATIONS == 10_000 and N_BOOTSTRAP == 1_000


def test_identical_samples_give_p_one():
    x = np.random.default_rng(1).normal(size=200)
    res = paired_permutation_test(x, x.copy(), seed=3)
    assert res.statistic == 0.0
    assert res.p_value == 1.0
    assert res.seed == 3 and res.n_resamples == 10_000 and res.n == 200
    json.dumps(res.to_dict())


def test_large_shift_gives_small_p():
    rng = np.random.default_rng(2)
    before = rng.normal(size=100)
    after = before + 1.0 + rng.normal(scale=0.1, size=100)
    res = paired_permutation_test(after, before, seed=0)
    assert res.statistic == pytest.approx(np.mean(after - before))
    assert res.p_value < 0.001
    one_sided = paired_permutation_test(after, before, seed=0, alternative="less")
    assert one_sided.p_value > 0.99  # the shift goes the other way


def test_small_n_is_exact():
    # 3 pairs, all differences +1: of the 8 sign patterns, 2 reach |mean| >= 1 -> p = 2/8
    res = paired_permutation_test([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], seed=0)
    assert res.p_value == pytest.approx(0.25)


def test_permutation_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=60), rng.normal(size=60) + 0.2
    p1 = paired_permutation_test(a, b, seed=11).p_value
    p2 = paired_permutation_test(a, b, seed=11).p_value
    assert p1 == p2


def test_permutation_rejects_bad_input():
    with pytest.raises(RoutelabError, match="differ in length"):
        paired_permutation_test([1, 2, 3], [1, 2])
    with pytest.raises(RoutelabError, match="NaN"):
        paired_permutation_test([1, np.nan], [1, 2])
    with pytest.raises(RoutelabError, match="alternative"):
        paired_permutation_test([1, 2], [1, 2], alternative="bigger")


def test_bootstrap_contains_mean_and_is_deterministic():
    x = np.random.default_rng(7).binomial(1, 0.65, size=500).astype(float)
    ci = bootstrap_ci(x, seed=4)
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low < x.mean() < ci.high
    assert 0.04 < ci.high - ci.low < 0.12  # ~ 2 * 1.96 * sqrt(.65 * .35 / 500) = 0.084
    assert ci == bootstrap_ci(x, seed=4)
    assert ci.n_resamples == 1000 and ci.seed == 4 and ci.confidence == 0.95
    json.dumps(ci.to_dict())
    assert bootstrap_ci(x, seed=5) != ci  # another seed, another interval


def test_bootstrap_paired_ratio_statistic():
    # ratio statistic over items kept intact: 2 * sum(biased) / sum(nonunknown) - 1
    biased = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], dtype=float)
    nonunk = np.ones(10)
    stat = lambda b, n, axis=-1: 2 * b.sum(axis=axis) / n.sum(axis=axis) - 1  # noqa: E731
    ci = bootstrap_ci((biased, nonunk), stat, seed=0)
    assert ci.estimate == pytest.approx(2 * 7 / 10 - 1)
    assert ci.low <= ci.estimate <= ci.high


def test_bootstrap_degenerate_sample():
    ci = bootstrap_ci(np.ones(20), seed=0)
    assert (ci.low, ci.estimate, ci.high) == (1.0, 1.0, 1.0)
    with pytest.raises(RoutelabError, match="non-empty"):
        bootstrap_ci([], seed=0)


def test_benjamini_hochberg_hand_computed():
    # sorted p: .01 .02 .03 .04 .20 (m = 5); raw q_i = p_i * m / i = .05 .05 .05 .05 .20,
    # then the running minimum from the top keeps them.
    res = benjamini_hochberg({"a": 0.04, "b": 0.01, "c": 0.20, "d": 0.03, "e": 0.02}, alpha=0.05)
    assert res.names == ["a", "b", "c", "d", "e"]
    assert res.adjusted == pytest.approx([0.05, 0.05, 0.20, 0.05, 0.05])
    assert res.rejected == [True, True, False, True, True]
    # a case where the step-up minimum matters: p = .01 .04 .045 (m = 3)
    # raw: .03 .06 .045 -> monotone from the top: .03 .045 .045
    res2 = benjamini_hochberg([0.045, 0.01, 0.04])
    assert res2.adjusted == pytest.approx([0.045, 0.03, 0.045])
    assert res2.names[1] == "1" and res2.adjusted[1] == pytest.approx(0.03)
    json.dumps(res2.to_dict())
    with pytest.raises(RoutelabError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.5, 1.5])


# ---- paired comparison of any metric ----------------------------------------------------------
def test_compare_paired_exact_on_a_small_sample():
    """n = 4 items: scipy enumerates all 2^4 swaps, so p is exact and checkable by hand."""
    from itertools import product

    from routelab.statistics import compare_paired

    before = np.array([0.0, 0.0, 1.0, 0.0])
    after = np.array([1.0, 1.0, 1.0, 1.0])  # three items flip 0 -> 1, one stays
    c = compare_paired((before,), (after,), metric="pct", seed=0)
    assert (c.before, c.after, c.delta, c.n) == (0.25, 1.0, 0.75, 4)
    # by hand: every sign assignment of the per-item differences d = (1, 1, 0, 1)
    d = after - before
    null = [abs(np.mean(np.array(s) * d)) for s in product([-1, 1], repeat=4)]
    assert c.p == pytest.approx(np.mean([x >= 0.75 - 1e-12 for x in null]))
    assert c.p == pytest.approx(4 / 16)  # the three non-zero signs all equal; the zero's is free
    # Cohen's d_av (pingouin) equals its formula: mean diff / mean of the two SDs' RMS
    sd = np.sqrt((after.var(ddof=1) + before.var(ddof=1)) / 2)
    assert c.effect == pytest.approx((after.mean() - before.mean()) / sd)


def test_compare_paired_ratio_metric_matches_a_hand_permutation():
    """A token-weighted perplexity (a ratio of sums): the test swaps whole items' (ll, n)."""
    from itertools import product

    from routelab.statistics import compare_paired

    def ppl(ll, n, axis=-1):
        return np.exp(-np.sum(ll, axis=axis) / np.sum(n, axis=axis))

    ll_b, n_b = np.array([-10.0, -4.0, -6.0]), np.array([5.0, 2.0, 3.0])
    ll_a, n_a = np.array([-12.0, -4.0, -9.0]), np.array([5.0, 2.0, 3.0])
    c = compare_paired((ll_b, n_b), (ll_a, n_a), ppl, metric="ppl", seed=0)
    assert c.before == pytest.approx(np.exp(20 / 10)) and c.after == pytest.approx(np.exp(25 / 10))
    obs = c.after - c.before
    null = []
    for swap in product([0, 1], repeat=3):
        la = np.where(swap, ll_b, ll_a); lb = np.where(swap, ll_a, ll_b)
        null.append(abs(ppl(la, n_a) - ppl(lb, n_b)))
    assert c.p == pytest.approx(np.mean([x >= abs(obs) - 1e-12 for x in null]))
    assert c.effect is None  # not a mean of one column
    assert c.ci_low <= c.delta <= c.ci_high


def test_compare_paired_null_and_bh_family():
    """Identical conditions: Δ = 0, p = 1; a real shift on 200 items: p tiny; BH across both."""
    from routelab.statistics import compare_paired, with_bh

    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    same = compare_paired((base,), (base.copy(),), metric="same", seed=1)
    assert same.delta == 0 and same.p == 1.0 and same.ci_low == same.ci_high == 0
    shifted = base.copy()
    shifted[np.flatnonzero(base == 1)[:40]] = 0  # 40 items lose their preference
    moved = compare_paired((base,), (shifted,), metric="moved", seed=1, n_permutations=2000)
    assert moved.delta == pytest.approx(-40 / 200) and moved.p < 0.001
    assert moved.ci_high < 0
    fam = with_bh([same, moved])
    assert fam[0].p_bh == pytest.approx(1.0) and fam[1].p_bh == pytest.approx(min(1, 2 * moved.p))


# --------------------------------------------------------------------------------------------
# Clusters: whole units swap and resample together (a testbed unit's frames, a BBQ template)
# --------------------------------------------------------------------------------------------


def test_cluster_sign_flips_equal_a_hand_enumeration_over_clusters():
    """Mean of one column over 3 clusters: every one of the 2**3 sign patterns flips a whole
    cluster's differences; scipy enumerates them all (exact test)."""
    from routelab.statistics import compare_paired

    before = np.array([1, 1, 0, 1, 1, 0, 1.0])
    after = np.array([0, 0, 0, 1, 0, 1, 0.0])
    clusters = np.array(["a", "a", "a", "b", "b", "c", "c"])
    c = compare_paired((before,), (after,), clusters=clusters, seed=0)
    d = after - before
    sums = np.array([d[clusters == k].sum() for k in "abc"])  # [-2, -1, 0]
    obs = d.mean()
    null = [abs((np.array(s) * sums).sum() / d.size) for s in product([1, -1], repeat=3)]
    assert c.delta == pytest.approx(obs) and c.n_clusters == 3 and c.n == 7
    assert c.p == pytest.approx(np.mean([x >= abs(obs) - 1e-12 for x in null]))  # 4/8: only 3 clusters
    items = compare_paired((before,), (after,), seed=0)  # as independent items the same Δ looks stronger
    assert items.p < c.p and items.n_clusters is None


def test_cluster_swaps_for_a_ratio_statistic_equal_a_hand_enumeration():
    from routelab.statistics import compare_paired

    def ppl(ll, n, axis=-1):
        return np.exp(-np.sum(ll, axis=axis) / np.sum(n, axis=axis))

    ll_b, n_b = np.array([-10.0, -4.0, -6.0, -3.0]), np.array([5.0, 2.0, 3.0, 1.0])
    ll_a, n_a = np.array([-12.0, -4.0, -9.0, -3.5]), n_b.copy()
    clusters = np.array([0, 0, 1, 1])
    c = compare_paired((ll_b, n_b), (ll_a, n_a), ppl, clusters=clusters, seed=0)
    obs = ppl(ll_a, n_a) - ppl(ll_b, n_b)
    null = []
    for swap in product([0, 1], repeat=2):
        rows = np.array(swap)[clusters].astype(bool)  # a cluster's rows swap together
        null.append(abs(ppl(np.where(rows, ll_b, ll_a), n_a) - ppl(np.where(rows, ll_a, ll_b), n_b)))
    assert c.delta == pytest.approx(obs) and c.n_clusters == 2
    assert c.p == pytest.approx(np.mean([x >= abs(obs) - 1e-12 for x in null]))


def test_cluster_bootstrap_draws_whole_clusters():
    """Two clusters, one all-ones (3 rows) and one all-zeros (2 rows): a resample holds each cluster's
    rows whole, so every resampled mean is 0, 3/5 or 1; items drawn one by one give means between."""
    from routelab.statistics import bootstrap_ci

    x = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    ci = bootstrap_ci(x, clusters=np.array(["u", "u", "u", "v", "v"]), seed=0, n_resamples=200)
    assert ci.estimate == pytest.approx(0.6) and ci.low == 0.0 and ci.high == 1.0
    per_item = bootstrap_ci(x, seed=0, n_resamples=200)  # items drawn one by one: other means
    assert per_item.low not in (0.0, 0.6, 1.0)


# --------------------------------------------------------------------------------------------
# Equivalence (TOST): "no change" is shown, not just not rejected
# --------------------------------------------------------------------------------------------


def test_tost_is_the_share_of_bootstrap_resamples_beyond_each_margin():
    from routelab.statistics import _tost

    boot = np.array([-0.06, -0.02, 0.0, 0.01, 0.03, 0.055, 0.07, 0.01, -0.01])  # 9 resamples
    p, eq = _tost(boot, 0.01, margin=0.05, alpha=0.05)
    # H0 Δ ≤ −0.05: 1 resample beyond; H0 Δ ≥ +0.05: 2 beyond → p = (1 + 2) / (9 + 1)
    assert p == pytest.approx(0.3) and eq is False
    p, eq = _tost(np.zeros(99), 0.0, margin=0.05, alpha=0.05)
    assert p == pytest.approx(0.01) and eq is True
    assert _tost(None, 0.0, margin=None, alpha=0.05) == (None, None)


def test_equivalence_holds_for_a_tiny_change_and_fails_for_a_real_one_or_too_few_items():
    from routelab.statistics import compare_paired

    rng = np.random.default_rng(1)
    base = (rng.random(720) < 0.5).astype(float)
    tiny = base.copy()
    tiny[np.flatnonzero(base == 1)[:5]] = 0  # Δ = −5/720
    eq = compare_paired((base,), (tiny,), margin=0.05, seed=0)
    assert eq.equivalent and eq.p_tost < 0.05 and eq.margin == 0.05
    real = base.copy()
    real[np.flatnonzero(base == 1)[:80]] = 0  # Δ = −0.11: beyond the margin
    assert not compare_paired((base,), (real,), margin=0.05, seed=0).equivalent
    noisy = rng.permutation(base)[:30]  # 30 items that change at random: not significant, not shown unchanged
    few = compare_paired((base[:30],), (noisy,), margin=0.05, seed=0)
    assert few.p > 0.05 and not few.equivalent
