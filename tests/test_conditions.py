"""The conditions registry: each condition's edit checked by hand on a constructed profile."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

import tiny_models as tm
from routelab import conditions as C
from routelab.errors import RoutelabError
from routelab.routing import attach, find_routers

K, LAYERS = 8, [1, 2]


@pytest.fixture
def ctx():
    rng = np.random.default_rng(0)
    phi = rng.permutation(np.linspace(0, 1.8, K * len(LAYERS)))
    ard = rng.random(K * len(LAYERS))
    prof = pl.DataFrame({"layer": np.repeat(LAYERS, K), "expert": np.tile(np.arange(K), len(LAYERS)),
                         "phi": phi, "ard": ard})
    return C.ConditionContext(prof, layers=[2], num_experts=K, top_k=2, seed=0)


def _bias(cond, layer):
    return cond.edit.layers[layer].bias.numpy()


def test_arr_is_minus_lambda_phi_on_the_chosen_layers(ctx):
    c = C.build("arr", ctx, lam=2.0)
    assert c.name == "arr_2" and C.build("arr", ctx, lam=0.25).name == "arr_0p25"  # no dots: metrics keys
    phi2 = ctx.profile.filter(pl.col("layer") == 2)["phi"].to_numpy()
    assert list(c.edit.layers) == [2] and np.allclose(_bias(c, 2), -2.0 * phi2)
    probe = C.build("arr_layer", ctx, lam=1.0, layer=1)
    assert list(probe.edit.layers) == [1]


def test_masks_follow_the_phi_ranking_with_ard_ties(ctx):
    prof = ctx.profile.with_columns(phi=pl.when(pl.col("expert") < 2).then(1.8).otherwise(pl.col("phi") / 10))
    ctx = C.ConditionContext(prof, layers=[2], num_experts=K, top_k=2)
    top = C.build("mask_top", ctx, n=3)
    # four slots tie at φ = 1.8 (experts 0, 1 of both layers): raw ARD orders them
    ties = prof.filter(pl.col("phi") == 1.8).sort("ard", descending=True).head(3)
    want = {}
    for layer, e in ties.select("layer", "expert").iter_rows():
        want.setdefault(layer, []).append(e)
    assert {k: list(v.masked) for k, v in top.edit.layers.items()} == {k: sorted(v) for k, v in want.items()}
    bottom = C.build("mask_bottom", ctx, n=2)
    lowest = prof.sort(["phi", "ard"], descending=[True, True]).tail(2)
    assert sorted((l, e) for l, le in bottom.edit.layers.items() for e in le.masked) == sorted(
        lowest.select("layer", "expert").iter_rows())
    r0, r1 = C.build("mask_random", ctx, n=4, draw=0), C.build("mask_random", ctx, n=4, draw=1)
    assert r0.group == r1.group == "mask_random" and (r0.name, r1.name) == ("mask_random_0", "mask_random_1")
    assert sum(len(le.masked) for le in r0.edit.layers.values()) == 4
    assert C.build("mask_random", ctx, n=4, draw=0).edit.layers.keys() == r0.edit.layers.keys()  # seeded


def test_ablation_profiles_by_hand(ctx):
    phi = ctx.profile.filter(pl.col("layer") == 2).sort("expert")["phi"].to_numpy()
    assert np.allclose(_bias(C.build("flatten", ctx), 2), -np.full(K, phi.mean()))
    assert np.allclose(_bias(C.build("inverted", ctx), 2), -(phi.max() - phi))
    # φ^α rescaled to φ's maximum: the shape changes, the strongest penalty does not (FARE Table 4 at equal strength)
    assert np.allclose(_bias(C.build("power", ctx, alpha=2.0), 2), -(phi**2) * phi.max() / phi.max() ** 2)
    assert np.allclose(_bias(C.build("power", ctx, alpha=0.5), 2), -np.sqrt(phi) * phi.max() / np.sqrt(phi.max()))
    assert np.allclose(_bias(C.build("power", ctx, alpha=1.0), 2), -phi)  # φ^1 is FSP's own profile
    assert -_bias(C.build("power", ctx, alpha=4.0), 2).min() == pytest.approx(phi.max())
    shuffled = -_bias(C.build("random_phi", ctx, draw=3), 2)
    assert sorted(shuffled) == pytest.approx(sorted(phi)) and not np.allclose(shuffled, phi)
    top3 = -_bias(C.build("top_k_profile", ctx, k=3), 2)
    keep = np.argsort(-phi)[:3]
    assert np.allclose(top3[keep], phi[keep]) and np.count_nonzero(top3) == 3
    clipped = C.build("top_k_profile", ctx, k=100)
    assert clipped.settings["k_used"] == K  # clipped to the edited layers' slots


def test_selection_and_random_selection_edit_only_the_contexts_layers(ctx):
    """Like for like with FSP's ARR: a selection edits the layers ARR edits (ctx.layers = [2]), and
    its selected experts outside them are not edited."""
    sel = pl.DataFrame({"layer": [1, 2, 2], "expert": [3, 0, 5], "score": [0.1, 0.2, 0.3],
                        "selected": [True, False, True]})
    c = C.build("selection", ctx, table=sel, lam=1.5)
    assert c.name == "safex_1p5" and list(c.edit.layers) == [2]
    assert np.allclose(_bias(c, 2), -1.5 * np.eye(K)[5]) and c.settings["n_selected"] == 1
    r = C.build("random_selection", ctx, n=2, lam=1.5, draw=0)
    assert list(r.edit.layers) == [2] and (_bias(r, 2) != 0).sum() == 2
    assert (r.name, r.group) == ("random_selection_0_1p5", "random_selection_1p5")
    same = C.build("random_selection", ctx, n=2, lam=4.0, draw=0)  # one draw, the same experts at every λ
    assert np.array_equal(_bias(same, 2) != 0, _bias(r, 2) != 0)
    none = pl.DataFrame({"layer": [1], "expert": [3], "score": [0.1], "selected": [True]})
    with pytest.raises(RoutelabError, match=r"no expert in layers \[2\]"):
        C.build("selection", ctx, table=none, lam=1.0)


def test_bad_conditions_are_refused(ctx):
    with pytest.raises(RoutelabError, match="Did you mean 'mask_top'"):
        C.build("mask_tp", ctx, n=2)
    with pytest.raises(RoutelabError, match="masking.n = 99"):
        C.build("mask_top", ctx, n=99)
    many = ctx.profile.with_columns(phi=pl.when(pl.col("layer") == 1).then(2.0).otherwise(0.0))
    with pytest.raises(RoutelabError, match="fewer than k=2"):
        C.build("mask_top", C.ConditionContext(many, [2], K, 2), n=7)
    with pytest.raises(RoutelabError, match="not MoE layers"):
        C.ConditionContext(ctx.profile, layers=[5], num_experts=K, top_k=2)
    with pytest.raises(RoutelabError, match="prompt_prefix is empty"):
        C.build("prompt_prefix", ctx, text="  ")


def test_masking_one_expert_changes_exactly_that_experts_selections():
    """At the masked layer, a token keeps its top-k unless it held the masked expert; then
    only that slot changes (the next-best expert takes it)."""
    model, adapter = tm.build("OlmoeForCausalLM")
    layer = max(find_routers(model, adapter))
    x = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(0))
    with attach(model, adapter, record=True) as plain:
        model(input_ids=x)
    before = next(c for c in plain.records if c.layer == layer)
    expert = int(torch.bincount(before.index.flatten(), minlength=K).argmax())
    prof = pl.DataFrame({"layer": np.repeat([0, 1, 2], K), "expert": np.tile(np.arange(K), 3),
                         "phi": np.where((np.repeat([0, 1, 2], K) == layer) & (np.tile(np.arange(K), 3) == expert), 1.0, 0.0)})
    cond = C.build("mask_top", C.ConditionContext(prof, [layer], K, 2), n=1)
    with attach(model, adapter, edit=cond.edit, record=True) as s:
        model(input_ids=x)
    after = next(c for c in s.records if c.layer == layer)
    had = (before.index == expert).any(-1)
    assert had.any() and (~had).any()
    for b, a, h, z in zip(before.index.tolist(), after.index.tolist(), had.tolist(), before.logits):
        if not h:
            assert sorted(a) == sorted(b)
        else:
            kept = [e for e in b if e != expert]
            ranked = [int(e) for e in torch.argsort(z, descending=True) if int(e) != expert]
            assert sorted(a) == sorted(kept + [next(e for e in ranked if e not in kept)])


def test_masking_scoped_to_the_aals_layers_chooses_only_there():
    """masking.layers = aals: top, bottom and random n come from the AALS layers only; `all` ranks
    every layer (FARE Table 2); no AALS layer means nothing to mask (None, the stage skips)."""
    from types import SimpleNamespace

    from routelab.masking import MaskingParams, scoped_context

    # layer 1: φ 0.0..0.7 by expert; layer 2: φ 1.0..1.7 — the global top 2 are layer 2's experts 7, 6
    prof = pl.DataFrame({"layer": np.repeat(LAYERS, K), "expert": np.tile(np.arange(K), 2),
                         "phi": np.r_[np.arange(K) / 10, 1 + np.arange(K) / 10], "ard": np.zeros(2 * K)})  # fmt: skip
    inputs = SimpleNamespace(moe_layers=LAYERS, context=lambda layers, seed: C.ConditionContext(prof, layers, K, 2, seed))

    def masked(cond):
        return {k: list(v.masked) for k, v in cond.edit.layers.items()}

    everywhere = scoped_context(inputs, "all", [1], 0)
    assert masked(C.build("mask_top", everywhere, n=2)) == {2: [6, 7]}
    in_aals = scoped_context(inputs, "aals", [1], 0)
    assert masked(C.build("mask_top", in_aals, n=2)) == {1: [6, 7]}
    assert masked(C.build("mask_bottom", in_aals, n=2)) == {1: [0, 1]}
    for draw in range(5):
        assert set(masked(C.build("mask_random", in_aals, n=2, draw=draw))) == {1}
    assert scoped_context(inputs, "aals", [], 0) is None
    with pytest.raises(RoutelabError, match="masking.layers: unknown value 'aal'. Did you mean 'aals'"):
        MaskingParams(layers="aal")
