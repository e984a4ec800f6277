"""routelab.profile: metric kernels on hand-computed tables, a planted expert, the context-matched
baseline by hand, both routing-shift tests, the designated experts, checks."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import spearmanr

import routelab.counting as counting
from routelab import plots
from routelab.config import load_params, section
from routelab.counting import prompt_counts
from routelab.errors import RoutelabError
from routelab.profile import (
    DESCRIPTOR_SPAN,
    FspWeights,
    GroupCounts,
    ProfileParams,
    activation_rates,
    compute_profile,
    entropy,
    entropy_terms,
    fsp_metrics,
    gini,
    js_terms,
    jsd,
    minmax_per_layer,
    phi_score,
    pmi,
    routing_shift_test,
)
from routelab.prompts import PromptsParams, build_prompts
from routelab.tables import PROFILE_COLUMNS, load_profile, routing_schema as arrow_schema
from routelab.vocab import Vocabulary
from test_counting import routing_meta as meta, write_routing

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------
# helpers: FARE prompts and a planted routing log (written with test_counting.write_routing)
# ---------------------------------------------------------------------------------------


SMALL = Vocabulary(
    axes={"gender": ("female", "male")},
    professions=("doctor", "nurse"),
    templates=("The {person} examined the patient today .", "Everyone thanked the {person} for the help ."),
)


def planted_rows(prompts: pl.DataFrame, layers, plant_layer: int, e_star: int, descriptor_only: bool = False):
    """Background: token w → experts (h(w) % 4, 4 + h(w) % 3) at every layer, the same for
    all prompts. Planted: in `plant_layer`, every token of "female" prompts from the
    descriptor on (or only the descriptor) routes to e_star instead of its first expert."""
    words = sorted({w for t in prompts["text"] for w in t.split()})
    h = {w: i for i, w in enumerate(words)}
    rows = []
    for r in prompts.iter_rows(named=True):
        toks = r["text"].split()
        d = toks.index(r["group"]) if r["group"] != "neutral" else None
        for layer in layers:
            for pos, w in enumerate(toks):
                top = [h[w] % 4, 4 + h[w] % 3]
                if layer == plant_layer and r["group"] == "female" and pos >= d and (not descriptor_only or pos == d):
                    top[0] = e_star
                rows.append((r["prompt_id"], layer, pos, top))
    return rows


@pytest.fixture
def small_prompts() -> pl.DataFrame:
    df = build_prompts(SMALL, None, PromptsParams(test_fraction=0.0))
    # word positions = token positions here (one token per word, no specials)
    starts = [t.split().index(g) if g != "neutral" else None for t, g in zip(df["text"], df["group"])]
    return df.with_columns(
        desc_start=pl.Series(starts, dtype=pl.Int32), desc_end=pl.Series(starts, dtype=pl.Int32) + 1
    )


# ---------------------------------------------------------------------------------------
# metric kernels: known answers
# ---------------------------------------------------------------------------------------


def test_jsd_known_values_and_scipy():
    # log base 2 (bits): disjoint distributions have JSD = 1
    assert jsd(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    # by hand: M = [.75, .25]; KL(p‖M) = .5 log2(.5/.75) + .5 log2(.5/.25) = 0.2075187;
    # KL(q‖M) = log2(1/.75) = 0.4150375; JSD = ½ (0.2075187 + 0.4150375) = 0.3112781
    assert jsd(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(0.3112781, abs=1e-7)
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, q = rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8))
        q[3] = 0
        q /= q.sum()
        # scipy's jensenshannon returns the square root: square it, same base
        assert jsd(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-10)
        terms = js_terms(p, q)
        assert (terms >= 0).all() and terms.sum() == pytest.approx(jsd(p, q))


def test_entropy_bits():
    assert entropy(np.full(4, 0.25)) == pytest.approx(2.0)
    assert entropy(np.array([1.0, 0.0, 0.0, 0.0])) == 0.0
    # h_e = −p log2 p: −.5 log2 .5 = .5; −.25 log2 .25 = .5; 0 · log 0 = 0
    assert entropy_terms(np.array([0.5, 0.25, 0.0])).tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_pmi_by_hand_with_zero_counts():
    a_g = np.array([[[2.0, 0.0]]])  # (G=1, L=1, K=2): expert 1 never used by the group
    n_g = np.array([[2.0]])
    a_n = np.array([[1.0, 1.0]])
    n_n = np.array([2.0])
    n_all = np.array([4.0])  # P(g) = 2/4
    out = pmi(a_g, n_g, a_n, n_n, n_all, alpha=0.5)
    # P̃(e0|g) = 2.5/3, P̃(e0) = 1.5/3 → log2((2.5/3)/((1.5/3)·0.5)) = log2(10/3)
    assert out[0, 0, 0] == pytest.approx(math.log2(10 / 3))
    # P̃(e1|g) = 0.5/3 (zero count smoothed) → log2((0.5/3)/((1.5/3)·0.5)) = log2(2/3)
    assert out[0, 0, 1] == pytest.approx(math.log2(2 / 3))
    assert np.isfinite(out).all()
    with pytest.raises(RoutelabError):
        pmi(a_g, n_g, a_n, n_n, n_all, alpha=0.0)


def test_minmax_constant_row_is_zero():
    x = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    out = minmax_per_layer(x)
    assert out.tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]
    assert not np.isnan(out).any()


def test_phi_weights():
    normed = {"ard": np.array([[1.0, 0.0]]), "jsd": np.array([[0.0, 1.0]]),
              "pmi": np.array([[1.0, 1.0]]), "entropy": np.array([[1.0, 0.0]])}  # fmt: skip
    assert phi_score(normed, FspWeights()).tolist() == [[1.0 + 0.3, 0.5 + 0.3]]
    w = FspWeights(ard=2.0, jsd=0.0, pmi=0.0, entropy=1.0)
    assert phi_score(normed, w).tolist() == [[3.0, 0.0]]


def test_gini_known_values():
    assert gini(np.ones(4)) == 0.0
    assert gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)  # (n − 1) / n


def _hand_counts() -> GroupCounts:
    # L = 1, K = 3, k = 1. Neutral: 4 tokens → experts 0,0,1,2. Group a: 2 tokens → 0,0.
    # Group b: 4 tokens → 1,1,2,2.
    return GroupCounts(
        layers=np.array([0]), groups=["a", "b"], axes=["gender", "gender"],
        a_g=np.array([[[2, 0, 0]], [[0, 2, 2]]]), n_g=np.array([[2], [4]]),
        a_n=np.array([[2, 1, 1]]), n_n=np.array([4]),
    )  # fmt: skip


def test_ard_by_hand_mean_and_max():
    gc = _hand_counts()
    # P(e) = [.5, .25, .25]; P(e|a) = [1, 0, 0]; P(e|b) = [0, .5, .5]
    # ARD a = [.5, .25, .25]; ARD b = [.5, .25, .25]
    m = fsp_metrics(gc, ProfileParams())
    assert m["ard"][0].tolist() == pytest.approx([0.5, 0.25, 0.25])
    gc.a_g = np.array([[[2, 0, 0]], [[1, 1, 2]]])  # b: P(e|b) = [.25, .25, .5] → ARD [.25, 0, .25]
    m = fsp_metrics(gc, ProfileParams(aggregation="mean"))
    assert m["ard"][0].tolist() == pytest.approx([0.375, 0.125, 0.25])
    m = fsp_metrics(gc, ProfileParams(aggregation="max"))
    assert m["ard"][0].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert m["p_neutral"][0].tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_layer_metrics_decompose_vs_broadcast():
    gc = _hand_counts()
    dec = fsp_metrics(gc, ProfileParams(layer_metrics="decompose"))
    d_n = np.array([0.5, 0.25, 0.25])
    expect = np.mean([js_terms(np.array([1.0, 0, 0]), d_n), js_terms(np.array([0, 0.5, 0.5]), d_n)], axis=0)
    assert dec["jsd"][0] == pytest.approx(expect)
    bc = fsp_metrics(gc, ProfileParams(layer_metrics="broadcast"))
    assert np.ptp(bc["jsd"][0]) == 0  # the layer value for every expert
    assert bc["jsd"][0, 0] == pytest.approx(expect.sum())
    assert (bc["jsd_norm"] == 0).all()  # constant column → 0, not NaN


def test_phi_is_finite_with_zero_counts():
    m = fsp_metrics(_hand_counts(), ProfileParams())
    for key in ("ard", "jsd", "pmi", "entropy", "phi", "pmi_norm"):
        assert np.isfinite(m[key]).all(), key


# ---------------------------------------------------------------------------------------
# routing log → profile
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batches", [True, False])
def test_planted_expert_ranks_first(tmp_path, small_prompts, monkeypatch, batches):
    monkeypatch.setattr(counting, "USE_BATCHES", batches)
    layers, e_star = [0, 2, 3], 7
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(small_prompts, layers, 2, e_star))
    profile, layer_axis, d = compute_profile(path, small_prompts, ProfileParams(split="all", n_permutations=50))
    assert profile.columns == list(PROFILE_COLUMNS)
    assert profile.height == len(layers) * 8
    top_ard = profile.sort("ard", descending=True).row(0, named=True)
    assert (top_ard["layer"], top_ard["expert"]) == (2, e_star)
    top_phi = profile.filter(pl.col("layer") == 2).sort("phi", descending=True).row(0, named=True)
    assert top_phi["expert"] == e_star and top_phi["ard_top_group"] == "female"
    assert top_phi["p_neutral"] == 0.0
    # ARD by hand: P(e*|female) = female tokens from the descriptor on / female tokens;
    # P(e*) = 0; mean over the two groups (male: 0)
    fem = small_prompts.filter(pl.col("group") == "female")
    n_tok = sum(len(t.split()) for t in fem["text"])
    n_hit = sum(len(t.split()) - t.split().index("female") for t in fem["text"])
    assert top_phi["ard"] == pytest.approx(0.5 * n_hit / n_tok)
    assert d["top_phi_layer"] == 2 and d["top_phi_expert"] == e_star
    # the per-expert null (B = 50; its power is tested in test_profile_null.py, 4 contexts are
    # too few): expert 7 is never used outside the plant, so no relabelling moves its ARD
    # from 0 in layers 0 and 3: p = 1
    assert profile.filter((pl.col("layer") != 2) & (pl.col("expert") == e_star))["ard_p"].to_list() == [1.0, 1.0]
    assert d["ard_null"]["n_significant"] == profile["significant"].sum()
    assert d["expert_slots"] == 24 and d["n_groups"] == 2
    f = profile["f"].to_numpy()
    assert d["gini_f"] == pytest.approx(gini(f))
    assert d["spearman_rho_phi_f"] == pytest.approx(spearmanr(profile["phi"], f).statistic)
    assert load_profile(profile, num_experts=8, layers=layers).height == 24
    assert set(layer_axis["axis"]) == {"gender"} and layer_axis.height == 3


def test_exclude_descriptor_removes_a_descriptor_only_plant(tmp_path, small_prompts):
    layers = [0, 1]
    path = write_routing(
        tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(small_prompts, layers, 1, 7, descriptor_only=True)
    )
    base, _, _ = compute_profile(path, small_prompts, ProfileParams(split="all", n_permutations=0))
    assert base.filter((pl.col("layer") == 1) & (pl.col("expert") == 7))["ard"].item() > 0
    ex, _, d = compute_profile(path, small_prompts, ProfileParams(split="all", exclude_descriptor=True, n_permutations=0))
    assert ex.filter((pl.col("layer") == 1) & (pl.col("expert") == 7))["ard"].item() == 0.0
    assert d["settings"]["exclude_descriptor"] is True


def test_routing_shift_in_both_forms(tmp_path, small_prompts):
    # the plant sits on the descriptor token only: excluding descriptors hides it completely
    layers = [0, 1]
    path = write_routing(
        tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(small_prompts, layers, 1, 7, descriptor_only=True)
    )
    _, _, d = compute_profile(path, small_prompts, ProfileParams(split="all", n_permutations=100))
    shift = d["routing_shift"]
    assert shift["with_descriptor"]["shift_jsd"] > shift["with_descriptor"]["null_mean"]
    assert shift["without_descriptor"]["shift_jsd"] == 0.0 and shift["without_descriptor"]["p_value"] == 1.0
    # reported the same way whatever exclude_descriptor says for φ
    cfg_ex = ProfileParams(split="all", n_permutations=100, exclude_descriptor=True)
    _, _, d_ex = compute_profile(path, small_prompts, cfg_ex)
    assert d_ex["routing_shift"] == shift
    assert (d["settings"]["exclude_descriptor"], d_ex["settings"]["exclude_descriptor"]) == (False, True)
    # no descriptor spans: only the form with descriptors
    _, _, d_no = compute_profile(path, small_prompts.drop(*DESCRIPTOR_SPAN), ProfileParams(split="all", n_permutations=0))
    assert d_no["routing_shift"]["without_descriptor"] is None
    assert d_no["routing_shift"]["with_descriptor"]["shift_jsd"] == shift["with_descriptor"]["shift_jsd"]


def _hand_prompts_and_log(tmp_path):
    """L = 1 (layer 0), K = 2, k = 1; each token of a prompt routes to the listed expert.

    context c1: n1 [0,0,0,1], a1 [0,0], a2 [0,1]; c2: n2 [0,1,1,1], a3 [1,1], b1 [1,0];
    c3: n3 [0,1], b2 [1,1,1]."""
    routes = {
        "n1": ("c1", "neutral", [0, 0, 0, 1]), "a1": ("c1", "a", [0, 0]), "a2": ("c1", "a", [0, 1]),
        "n2": ("c2", "neutral", [0, 1, 1, 1]), "a3": ("c2", "a", [1, 1]), "b1": ("c2", "b", [1, 0]),
        "n3": ("c3", "neutral", [0, 1]), "b2": ("c3", "b", [1, 1, 1]),
    }  # fmt: skip
    prompts = pl.DataFrame({
        "prompt_id": list(routes), "text": ["x"] * len(routes),
        "axis": [None if g == "neutral" else "gender" for _, g, _ in routes.values()],
        "group": [g for _, g, _ in routes.values()], "context_id": [c for c, _, _ in routes.values()],
        "split": ["validation"] * len(routes),
    })  # fmt: skip
    rows = [(pid, 0, pos, [e]) for pid, (_, _, es) in routes.items() for pos, e in enumerate(es)]
    return prompts, write_routing(tmp_path / "hand.parquet", meta(2, 1, [0]), rows)


def test_context_matched_baseline_by_hand(tmp_path):
    prompts, path = _hand_prompts_and_log(tmp_path)
    pooled, _, _ = compute_profile(path, prompts, ProfileParams(split="all", n_permutations=0))
    cfg = ProfileParams(split="all", n_permutations=0, baseline="context_matched")
    matched, _, d = compute_profile(path, prompts, cfg)
    # a = [3, 3]/6, b = [1, 4]/5. Pooled neutral [5, 5]/10: ARD a 0, b .3 → mean .15.
    assert pooled["ard"].to_list() == pytest.approx([0.15, 0.15])
    # matched: a has 2 prompts in c1, 1 in c2 → 2·[3,1] + [1,3] = [7,5]/12; ARD a = |.5 − 7/12| = 1/12.
    # b: once in c2, once in c3 → [1,3] + [1,1] = [2,4]/6; ARD b = |.2 − 1/3| = 2/15. Mean 13/120.
    assert matched["ard"].to_list() == pytest.approx([13 / 120, 13 / 120])
    assert matched["p_neutral"].to_list() == pooled["p_neutral"].to_list() == [0.5, 0.5]  # stays pooled
    # JSD (decompose): the per-expert terms sum to the mean over groups of JSD(D_g ‖ D_base,g)
    js_a = jensenshannon([0.5, 0.5], [7 / 12, 5 / 12], base=2) ** 2
    js_b = jensenshannon([0.2, 0.8], [1 / 3, 2 / 3], base=2) ** 2
    want = (js_a + js_b) / 2
    assert matched["jsd"].sum() == pytest.approx(want)
    # PMI, expert 0, α = .5, P(g) = N_g / N_all with N_all = 10 + 6 + 5 = 21
    pmi_a = math.log2((3.5 / 7) / ((7.5 / 13) * 6 / 21))
    pmi_b = math.log2((1.5 / 6) / ((2.5 / 7) * 5 / 21))
    assert matched["pmi"][0] == pytest.approx((pmi_a + pmi_b) / 2)
    assert d["settings"]["baseline"] == "context_matched"
    # a context with a group but no neutral prompt: no matched baseline
    moved = pl.when(pl.col("prompt_id") == "b2").then(pl.lit("c4")).otherwise("context_id")
    orphan = prompts.with_columns(context_id=moved)
    with pytest.raises(RoutelabError, match="profile.baseline: pooled"):
        compute_profile(path, orphan, cfg)


def test_designated_experts_ranked_and_boxed(tmp_path, small_prompts):
    layers, e_star = [0, 2], 7
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(small_prompts, layers, 2, e_star))
    cfg = ProfileParams(split="all", n_permutations=50)
    profile, _, d = compute_profile(path, small_prompts, cfg, designated={2: [e_star]})
    rep = d["designated"]
    assert rep["experts"]["L2_E7"]["rank"] == 1 and rep["all_top_ranked"] is True
    assert rep["n_designated"] == 1
    assert rep["n_significant"] + rep["n_significant_outside"] == d["ard_null"]["n_significant"]
    _, _, plain = compute_profile(path, small_prompts, ProfileParams(split="all", n_permutations=0))
    assert "designated" not in plain  # no plant.json: nothing changes
    png = plots.phi_heatmap(profile, tmp_path / "phi.png", designated={2: [e_star]})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RoutelabError, match=r"designated layers \[5\]"):
        plots.phi_heatmap(profile, tmp_path / "bad.png", designated={5: [0]})


def test_untested_profile_has_null_significance(tmp_path, small_prompts):
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0]), planted_rows(small_prompts, [0], 0, 7))
    profile, _, d = compute_profile(path, small_prompts, ProfileParams(split="all", n_permutations=0))
    for c in ("ard_p", "ard_p_bh", "significant"):
        assert profile[c].null_count() == profile.height, c  # not tested ≠ not significant
    assert d["ard_null"]["n_significant"] is None and d["routing_shift"]["with_descriptor"]["p_value"] is None


def test_token_filters_counts(tmp_path, small_prompts):
    layers = [0]
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(small_prompts, layers, 0, 7))
    full = prompt_counts(path, small_prompts)
    skip = prompt_counts(path, small_prompts, skip_first_token=True)
    excl = prompt_counts(path, small_prompts, exclude_span=DESCRIPTOR_SPAN)
    n_words = np.array([len(t.split()) for t in small_prompts["text"]])
    assert full.n_tokens[:, 0].tolist() == n_words.tolist()
    assert skip.n_tokens[:, 0].tolist() == (n_words - 1).tolist()
    is_demo = small_prompts["axis"].is_not_null().to_numpy()
    assert excl.n_tokens[:, 0].tolist() == (n_words - is_demo).tolist()
    assert full.counts.sum() == 2 * n_words.sum()  # k = 2 entries per token


def test_split_filter(tmp_path):
    df = build_prompts(SMALL, None, PromptsParams(test_fraction=0.5, seed=1))
    layers = [0]
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(df, layers, 0, 7))
    _, _, d = compute_profile(path, df, ProfileParams(split="validation", n_permutations=0))
    val = df.filter(pl.col("split") == "validation")
    assert d["n_prompts_neutral"] + d["n_prompts_demographic"] == val.height


def test_routing_shift_test_detects_shift_and_not_noise():
    rng = np.random.default_rng(0)
    n_ctx, L, K = 40, 2, 4
    context = np.repeat(np.arange(n_ctx), 2)
    neutral = np.tile([True, False], n_ctx)
    base = rng.multinomial(10, np.full(K, 0.25), size=(2 * n_ctx, L))  # (P, L, K) noise
    shifted = base.copy()
    shifted[~neutral, :, 0] += 10  # demographic prompts use expert 0 much more
    res = routing_shift_test(shifted, context, neutral, 200, seed=0)
    assert res["p_value"] == pytest.approx(1 / 201)
    assert res["shift_jsd"] > res["null_mean"]
    res0 = routing_shift_test(base, context, neutral, 200, seed=0)
    assert res0["p_value"] > 0.05
    # observed statistic = mean over layers of JSD(pooled demographic ‖ pooled neutral)
    d_n = base[neutral].sum(0) / base[neutral].sum((0, 2))[:, None]
    d_d = base[~neutral].sum(0) / base[~neutral].sum((0, 2))[:, None]
    assert res0["shift_jsd"] == pytest.approx(np.mean([jensenshannon(d_d[l], d_n[l], base=2) ** 2 for l in range(L)]))


def test_activation_rates():
    assert activation_rates(np.array([[2, 1, 1]]), np.array([4])).tolist() == [[0.5, 0.25, 0.25]]


# ---------------------------------------------------------------------------------------
# bad input: clear errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [9, -1])
@pytest.mark.parametrize("batches", [True, False])
def test_topk_out_of_range_is_wrong_shape(tmp_path, small_prompts, monkeypatch, bad, batches):
    monkeypatch.setattr(counting, "USE_BATCHES", batches)
    rows = [(pid, 0, 0, [0, bad]) for pid in small_prompts["prompt_id"]]  # K = 8
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0]), rows)
    with pytest.raises(RoutelabError, match=f"index {bad} outside 0..7.*wrong shape"):
        compute_profile(path, small_prompts, ProfileParams(split="all"))


def test_layer_outside_metadata_is_wrong_shape(tmp_path, small_prompts):
    rows = [(pid, 5, 0, [0, 1]) for pid in small_prompts["prompt_id"]]
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0]), rows)
    with pytest.raises(RoutelabError, match="moe_layers"):
        compute_profile(path, small_prompts, ProfileParams(split="all"))


def test_unknown_prompt_ids(tmp_path, small_prompts):
    rows = [("nope", 0, 0, [0, 1])] + [(pid, 0, 0, [0, 1]) for pid in small_prompts["prompt_id"]]
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0]), rows)
    with pytest.raises(RoutelabError, match="not in the prompts table"):
        compute_profile(path, small_prompts, ProfileParams(split="all"))


def test_empty_group(tmp_path, small_prompts):
    keep = small_prompts.filter(pl.col("group") != "male")["prompt_id"]
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0]), [(p, 0, 0, [0, 1]) for p in keep])
    with pytest.raises(RoutelabError, match="empty group"):
        compute_profile(path, small_prompts, ProfileParams(split="all"))


def test_missing_columns(tmp_path, small_prompts):
    path = tmp_path / "bad.parquet"
    t = pa.table({"prompt_id": ["x"], "layer": pa.array([0], pa.int16())})
    t = t.replace_schema_metadata(arrow_schema(meta(8, 2, [0])).metadata)
    pq.write_table(t, path)
    with pytest.raises(RoutelabError, match="lacks columns"):
        compute_profile(path, small_prompts, ProfileParams(split="all"))
    with pytest.raises(RoutelabError, match="not found"):
        compute_profile(tmp_path / "none.parquet", small_prompts, ProfileParams())


def test_exclude_descriptor_needs_spans(tmp_path, small_prompts):
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0]), [(p, 0, 0, [0, 1]) for p in small_prompts["prompt_id"]])
    with pytest.raises(RoutelabError, match="desc_start"):
        compute_profile(path, small_prompts.drop("desc_start", "desc_end"), ProfileParams(split="all", exclude_descriptor=True))


def test_load_profile_checks():
    good = pl.DataFrame({"layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "phi": [0.1, 0.2, 0.3, 0.4]})
    assert load_profile(good, num_experts=2, layers=[0, 1]).height == 4
    with pytest.raises(RoutelabError, match="wrong shape"):
        load_profile(good.filter(pl.col("expert") == 0), num_experts=2)
    with pytest.raises(RoutelabError, match="NaN"):
        load_profile(good.with_columns(phi=pl.Series([0.1, float("nan"), 0.3, 0.4])))
    with pytest.raises(RoutelabError, match="duplicate"):
        load_profile(pl.concat([good, good.head(1)]))
    with pytest.raises(RoutelabError, match="MoE layers"):
        load_profile(good, layers=[0, 2])
    with pytest.raises(RoutelabError, match="lacks columns"):
        load_profile(good.drop("phi"))


def test_params_section_nested_weights_and_choices():
    cfg = section(ProfileParams, {"weights": {"ard": 1, "jsd": 0.25}, "aggregation": "max"}, "profile")
    assert cfg.weights == FspWeights(ard=1.0, jsd=0.25, pmi=0.3, entropy=0.0)
    with pytest.raises(RoutelabError, match="Did you mean 'mean'"):
        ProfileParams(aggregation="maen")
    with pytest.raises(RoutelabError, match="smoothing"):
        ProfileParams(smoothing=0.0)
    with pytest.raises(RoutelabError, match="Did you mean 'context_matched'"):
        ProfileParams(baseline="context_match")
    with pytest.raises(RoutelabError, match="profile.alpha"):
        ProfileParams(alpha=1.0)
    with pytest.raises(RoutelabError, match="unknown key 'entropie'"):
        section(ProfileParams, {"weights": {"entropie": 1.0}}, "profile")


def test_plots_write_png(tmp_path, small_prompts):
    layers = [0, 2]
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, layers), planted_rows(small_prompts, layers, 2, 7))
    profile, layer_axis, _ = compute_profile(path, small_prompts, ProfileParams(split="all", n_permutations=0))
    out = [
        plots.phi_heatmap(profile, tmp_path / "p" / "phi.png", title="test"),
        plots.jsd_by_axis(layer_axis, tmp_path / "p" / "jsd.png"),
        plots.routing_shift(profile, tmp_path / "p" / "shift.png"),
    ]
    for p in out:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in (tmp_path / "p").iterdir()) == ["jsd.png", "phi.png", "shift.png"]  # no temp files
    with pytest.raises(RoutelabError, match="not in the profile"):
        plots.routing_shift(profile, tmp_path / "x.png", layer=9)


def test_error_hints_name_real_profile_keys(tmp_path, small_prompts):
    keys = {f.name for f in dataclasses.fields(ProfileParams)}
    assert set(load_params(ROOT / "params.yaml")["profile"]) == keys  # params.yaml ↔ the dataclass
    # layer 0 holds only position 0 of the "female" prompts: skip_first_token empties that group there
    rows = [(pid, layer, pos, [0, 1])
            for pid, g, text in small_prompts.select("prompt_id", "group", "text").iter_rows()
            for layer in (0, 1) for pos in range(len(text.split()))
            if not (layer == 0 and g == "female" and pos > 0)]  # fmt: skip
    path = write_routing(tmp_path / "r.parquet", meta(8, 2, [0, 1]), rows)
    bad = [
        (ProfileParams(split="all", skip_first_token=True, n_permutations=0), small_prompts, "relax profile.skip_first_token"),
        (ProfileParams(split="test", n_permutations=0), small_prompts, "set profile.split"),
        (ProfileParams(split="all", exclude_descriptor=True), small_prompts.drop("desc_start", "desc_end"), "desc_start"),
        (ProfileParams(split="all", exclude_descriptor=True),
         small_prompts.with_columns(desc_start=pl.lit(None, pl.Int32)), "have no descriptor token span"),
    ]  # fmt: skip
    for cfg, prompts, expect in bad:
        with pytest.raises(RoutelabError, match=expect) as err:
            compute_profile(path, prompts, cfg)
        named = re.findall(r"profile\.(\w+)", str(err.value))
        assert named and set(named) <= keys, str(err.value)
    with pytest.raises(RoutelabError, match="profile.smoothing") as err:
        ProfileParams(smoothing=0.0)
