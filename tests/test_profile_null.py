"""routelab.profile_null: relabelling within context, the per-expert ARD null (hand-built counts,
an enumerable case, pure noise), the context-matched weights, the designated experts."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest
from scipy import stats

from routelab.errors import RoutelabError
from routelab.profile import GroupCounts, ProfileParams, fsp_metrics
from routelab.profile_null import (
    ArdStatistic,
    ContextLayout,
    ard_permutation_test,
    designated_report,
    load_designated,
    permutation_p,
)

# ---------------------------------------------------------------------------------------
# contexts and relabellings
# ---------------------------------------------------------------------------------------


def test_layout_by_hand():
    # prompts 0..5; contexts "y" = {1, 4}, "x" = {0, 2, 5}, "z" = {3}; labels 0 = neutral
    context = np.array(["x", "y", "x", "z", "y", "x"])
    label = np.array([0, 0, 1, 0, 2, 2])
    lay = ContextLayout.build(context, label, n_labels=3)
    assert lay.members.tolist() == [[0, 2, 5], [1, 4, -1], [3, -1, -1]]  # contexts sorted: x, y, z
    assert lay.labels.tolist() == [[0, 1, 2], [0, 2, -1], [0, -1, -1]]
    assert lay.n_prompts == 6
    tau = lay.draw(np.random.default_rng(0), 50)  # (b, C, S)
    assert tau.shape == (50, 3, 3)
    # each context's real slots are permuted among themselves; padding stays last
    assert all(sorted(t[0]) == [0, 1, 2] for t in tau)
    assert (np.sort(tau[:, 1, :2], axis=1) == [0, 1]).all() and (tau[:, 1, 2] == 2).all()
    assert (tau[:, 2] == [0, 1, 2]).all()
    assert len({tuple(t[0]) for t in tau}) == 6  # all 3! orders of context x occur in 50 draws


def test_matched_weights_by_hand():
    # context c1: neutral n1, a, a; c2: neutral n2, a, b; c3: neutral n3, b. Labels: a = 1, b = 2.
    context = np.array(["c1", "c1", "c1", "c2", "c2", "c2", "c3", "c3"])
    label = np.array([0, 1, 1, 0, 1, 2, 0, 2])
    W = ContextLayout.build(context, label, 3).matched_weights().toarray()  # (G, P)
    # group a: n1 weighted 2 (a has 2 prompts in c1), n2 weighted 1; group b: n2 and n3 once each
    assert W.tolist() == [[2, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1, 0]]
    with pytest.raises(RoutelabError, match="profile.baseline: pooled"):
        ContextLayout.build(np.array(["c1", "c1", "c2"]), np.array([0, 1, 2]), 3).matched_weights()


# ---------------------------------------------------------------------------------------
# the per-expert ARD null
# ---------------------------------------------------------------------------------------


def _contexts(n_ctx: int, labels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """n_ctx contexts, each with one prompt of every label in ``labels`` (0 = neutral)."""
    return np.repeat(np.arange(n_ctx), len(labels)), np.tile(labels, n_ctx)


def _null(counts, n_tokens, layout, n_permutations, seed=0, aggregation="mean", context_matched=False):
    return ard_permutation_test(counts, n_tokens, layout, aggregation=aggregation, context_matched=context_matched,
                                n_permutations=n_permutations, seed=seed)  # fmt: skip


def _group_counts(counts, n_tokens, label, **baseline) -> GroupCounts:
    """The profile's GroupCounts of per-prompt counts with labels 0 (neutral), 1 (a), 2 (b)."""
    return GroupCounts(
        layers=np.arange(counts.shape[1]), groups=["a", "b"], axes=["x", "x"],
        a_g=np.stack([counts[label == g].sum(0) for g in (1, 2)]),
        n_g=np.stack([n_tokens[label == g].sum(0) for g in (1, 2)]),
        a_n=counts[label == 0].sum(0), n_n=n_tokens[label == 0].sum(0), **baseline,
    )  # fmt: skip


def test_planted_expert_gets_the_floor_and_identical_experts_get_one():
    rng = np.random.default_rng(0)
    n_ctx, L, K, B = 60, 2, 4, 200
    context, label = _contexts(n_ctx, (0, 1, 2))  # neutral, a, b
    P = context.size
    # every expert but (1, 2): the same count for all members of a context (labels irrelevant)
    per_ctx = rng.integers(0, 6, size=(n_ctx, L, K))
    counts = per_ctx[context].copy()  # (P, L, K)
    counts[:, 1, 2] = np.where(label == 1, 8, 2)  # expert (1, 2): rate .8 under group a, .2 otherwise
    n_tokens = np.full((P, L), 10)
    lay = ContextLayout.build(context, label, 3)
    null = _null(counts, n_tokens, lay, B)
    planted = 1 * K + 2
    # observed ARD by hand: group a |.8 − .2| = .6, group b 0 → mean .3; every other expert 0
    assert null.observed[planted] == pytest.approx(0.3)
    assert np.delete(null.observed, planted).tolist() == [0.0] * (L * K - 1)
    # no relabelling reaches T: all 60 "a" prompts would have to land on one label
    assert null.p[planted] == pytest.approx(1 / (B + 1))
    assert np.delete(null.p, planted).tolist() == [1.0] * (L * K - 1)  # T* = T = 0 always
    # BH over L·K = 8 tests: p_bh = 8 · p for the smallest, 1 for the rest
    assert null.p_bh[planted] == pytest.approx(8 / (B + 1))
    assert null.p_bh[planted] < 0.05 and (np.delete(null.p_bh, planted) == 1.0).all()
    # parity: the null's observed statistic is the profile's `ard` column
    ard = fsp_metrics(_group_counts(counts, n_tokens, label), ProfileParams())["ard"]
    assert null.observed == pytest.approx(ard.ravel(), abs=1e-15)


def test_p_formula_on_an_enumerable_case():
    # two contexts of (neutral, a); L = 1, K = 2, k = 1 (counts of a prompt sum to its tokens)
    counts = np.array([[[3, 1]], [[1, 3]], [[2, 2]], [[0, 4]]])  # (P, 1, 2): n1, a1, n2, a2
    n_tokens = counts.sum(-1)  # (P, 1)
    context, label = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    lay = ContextLayout.build(context, label, 2)
    stat = ArdStatistic(counts, n_tokens, lay, "mean", context_matched=False)
    # all 4 relabellings: keep or swap the labels in each context
    taus = np.array([[[s0, 1 - s0], [s1, 1 - s1]] for s0, s1 in itertools.product((0, 1), repeat=2)])
    null = stat(taus)  # (4, 2)
    # by hand: keep/keep a = [1,7]/8, n = [5,3]/8 → ARD .5; swap one context → a and n both [3,5]/8 → 0;
    # swap both: a = [5,3]/8, n = [1,7]/8 → .5
    assert null[:, 0].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5])
    assert null[:, 1].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5])
    observed = stat(lay.identity())[0]
    n_ge = (null >= observed - 1e-12).sum(axis=0)
    assert n_ge.tolist() == [2, 2]
    assert permutation_p(n_ge, 4).tolist() == [3 / 5, 3 / 5]  # (1 + 2) / (1 + 4)
    # random draws: p = (1 + #{T* ≥ T}) / (1 + B) → the exact permutation p, 2 of 4 = .5
    res = _null(counts, n_tokens, lay, 4000, seed=3)
    assert res.p == pytest.approx([0.5, 0.5], abs=0.03)


def test_pure_noise_gives_uniform_p_and_nothing_significant():
    rng = np.random.default_rng(0)
    n_ctx, L, K = 150, 4, 16
    context, label = _contexts(n_ctx, (0, 1, 2, 3))  # neutral and three groups
    probs = rng.uniform(0.05, 0.5, size=(L, K))  # uneven expert use, the same for every label
    # independent binomial counts (10 tokens per prompt): independent experts, so the 64
    # p-values are independent draws and a KS test against the uniform applies
    counts = rng.binomial(10, probs, size=(context.size, L, K))  # (P, L, K)
    n_tokens = np.full((context.size, L), 10)
    lay = ContextLayout.build(context, label, 4)
    res = _null(counts, n_tokens, lay, 199)
    assert 0.4 < res.p.mean() < 0.6
    assert 0.02 <= (res.p <= 0.1).mean() <= 0.2
    assert stats.kstest(res.p, "uniform").pvalue > 0.1
    assert (res.p_bh >= 0.05).all()  # nothing significant after BH


def test_context_matched_null_uses_the_matched_baseline():
    rng = np.random.default_rng(2)
    context, label = _contexts(40, (0, 1, 1, 2))  # each context: neutral, a, a, b
    counts = rng.integers(0, 5, size=(context.size, 2, 3))
    n_tokens = np.full((context.size, 2), 6)
    lay = ContextLayout.build(context, label, 3)
    res = _null(counts, n_tokens, lay, 20, aggregation="max", context_matched=True)
    W = lay.matched_weights()  # (G, P)
    gc = _group_counts(counts, n_tokens, label, a_base=(W @ counts.reshape(context.size, -1)).reshape(2, 2, 3),
                       n_base=W @ n_tokens)  # fmt: skip
    expect = fsp_metrics(gc, ProfileParams(aggregation="max", baseline="context_matched"))["ard"].ravel()
    assert res.observed == pytest.approx(expect, abs=1e-15)
    assert ((res.p > 0) & (res.p <= 1)).all()


# ---------------------------------------------------------------------------------------
# designated experts (plant.json)
# ---------------------------------------------------------------------------------------


def test_load_designated(tmp_path):
    assert load_designated(None) is None
    assert load_designated(tmp_path) is None  # no plant.json: nothing changes
    with pytest.raises(RoutelabError, match="--model-dir .*not a folder"):
        load_designated(tmp_path / "typo")
    (tmp_path / "plant.json").write_text(json.dumps({"designated": {"2": [9, 5, 5], "0": [1]}, "recipe": "x"}))
    assert load_designated(tmp_path) == {2: [5, 9], 0: [1]}
    (tmp_path / "plant.json").write_text(json.dumps({"experts": [1]}))
    with pytest.raises(RoutelabError, match="plant.json: not a plant file"):
        load_designated(tmp_path)
    (tmp_path / "plant.json").write_text(json.dumps({"designated": {"1": []}}))
    with pytest.raises(RoutelabError, match="names a layer without experts"):
        load_designated(tmp_path)
    (tmp_path / "plant.json").write_text(json.dumps({"designated": {}, "method": "outside"}))  # nonrouted
    assert load_designated(tmp_path) is None


def test_designated_report_by_hand():
    # layer 0: φ = [.9, .9, .1, .5] (experts 0 and 1 tie on φ; raw ARD breaks it); layer 1: [.2, .8, .4, .6]
    profile = pl.DataFrame({
        "layer": [0] * 4 + [1] * 4, "expert": list(range(4)) * 2,
        "phi": [0.9, 0.9, 0.1, 0.5, 0.2, 0.8, 0.4, 0.6],
        "ard": [0.1, 0.2, 0.0, 0.1, 0.0, 0.3, 0.1, 0.2],
        "ard_p_bh": [0.01, 0.01, 0.9, 0.2, 0.9, 0.01, 0.6, 0.03],
        "significant": [True, True, False, False, False, True, False, True],
    })  # fmt: skip
    rep = designated_report(profile, {0: [0, 1], 1: [2]}, n_experts=4)
    assert {k: v["rank"] for k, v in rep["experts"].items()} == {"L0_E0": 2, "L0_E1": 1, "L1_E2": 3}
    assert rep["experts"]["L1_E2"] == {"rank": 3, "phi": 0.4, "p_bh": 0.6, "significant": False}
    assert rep["all_top_ranked"] is False  # layer 1's designated expert is third, not first
    assert (rep["n_designated"], rep["n_significant"], rep["n_significant_outside"]) == (3, 2, 2)
    assert designated_report(profile, {0: [0, 1]}, 4)["all_top_ranked"] is True
    with pytest.raises(RoutelabError, match="--model-dir"):
        designated_report(profile, {5: [0]}, 4)
    with pytest.raises(RoutelabError, match="experts 0..3"):
        designated_report(profile, {0: [4]}, 4)
    untested = profile.with_columns(significant=pl.lit(None, pl.Boolean), ard_p_bh=pl.lit(None, pl.Float64))
    assert designated_report(untested, {0: [0]}, 4)["n_significant"] is None
