"""Router adapters of all nine families against independent references (docs/routers.md)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from routelab.errors import RoutelabError
from routelab.routing import STEER_EPS, RoutingEdit, attach, find_routers

PLAIN_TOPK = {  # families whose selection is plain top-k of the scores (no groups, no sparsemixer)
    "OlmoeForCausalLM", "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
    "GptOssForCausalLM", "DeepseekForCausalLM",
}


@pytest.fixture(scope="module", params=tm.FAMILIES)
def family(request):
    model, adapter = tm.build(request.param)
    return request.param, model, adapter


def _ids(seed=0, shape=(3, 9)):
    return torch.randint(0, 64, shape, generator=torch.Generator().manual_seed(seed))


def _capture_router_inputs(model, adapter):
    """Forward pre-hooks (ours, independent of routelab) capturing each router's input."""
    seen, handles = {}, []
    for layer, router in find_routers(model, adapter).items():
        handles.append(router.register_forward_pre_hook(lambda m, a, layer=layer: seen.__setitem__(layer, a[0].detach())))
    return seen, handles


def _reference_router(router, adapter, bias):
    """The family's OWN router code, run on logits z + bias.

    Independent of routelab's re-implementation: a copy of the router with one extra input
    feature fixed to 1 whose weight column is ``bias`` computes F.linear([h, 1], [W, b]) = z + b,
    then its own forward does softmax/groups/renormalisation/scaling.
    """
    ref = copy.deepcopy(router)
    w = router.weight.detach()
    ref.weight = torch.nn.Parameter(torch.cat([w, bias.to(w.dtype).unsqueeze(1)], dim=1))
    for attr in ("hidden_dim", "gating_dim", "in_features"):
        if hasattr(ref, attr):
            setattr(ref, attr, w.shape[1] + 1)

    def run(hidden):
        h = torch.cat([hidden, torch.ones(*hidden.shape[:-1], 1, dtype=hidden.dtype)], dim=-1)
        if adapter.router_input_3d and h.dim() == 2:
            h = h.unsqueeze(0)
        with torch.no_grad():
            out = ref.forward(h)
        return adapter.selection(out)

    return run


def _sets(index):
    return [sorted(r) for r in index.tolist()]


def test_recorded_logits_equal_linear_of_captured_hidden(family):
    arch, model, adapter = family
    seen, handles = _capture_router_inputs(model, adapter)
    try:
        with attach(model, adapter, record=True) as s:
            model(input_ids=_ids(), attention_mask=torch.ones(3, 9, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    routers = find_routers(model, adapter)
    assert [r.layer for r in s.records] == s.moe_layers
    for call in s.records:
        r = routers[call.layer]
        h = seen[call.layer].reshape(-1, r.weight.shape[1])
        expected = F.linear(h, r.weight, getattr(r, "bias", None))  # (N, K)
        torch.testing.assert_close(call.logits, expected.float(), rtol=1e-5, atol=1e-5)
        assert call.logits.shape == (27, 8) and call.index.shape == (27, 2)


def test_arr_selection_matches_hand_and_router_reference(family):
    arch, model, adapter = family
    routers = find_routers(model, adapter)
    layer = max(routers)
    phi = torch.linspace(0, 1, 8)[torch.randperm(8, generator=torch.Generator().manual_seed(3))]
    lam = 2.0
    profile = {layer: phi}
    import polars as pl

    table = pl.DataFrame({"layer": [layer] * 8, "expert": list(range(8)), "phi": phi.tolist()})
    seen, handles = _capture_router_inputs(model, adapter)
    try:
        with attach(model, adapter, edit=RoutingEdit.arr(table, lam), record=True) as s:
            model(input_ids=_ids(1), attention_mask=torch.ones(3, 9, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    call = next(c for c in s.records if c.layer == layer)
    hidden = seen[layer].reshape(-1, routers[layer].weight.shape[1])
    z = F.linear(hidden, routers[layer].weight, getattr(routers[layer], "bias", None)).float()
    torch.testing.assert_close(call.logits, z - lam * profile[layer])
    w_ref, i_ref = _reference_router(routers[layer], adapter, -lam * phi)(hidden)
    assert _sets(call.index) == _sets(i_ref)
    order_rec, order_ref = call.index.sort(-1)[1], i_ref.sort(-1)[1]
    torch.testing.assert_close(call.weights.gather(-1, order_rec), w_ref.float().gather(-1, order_ref), rtol=1e-4, atol=1e-5)
    if arch in PLAIN_TOPK:  # by hand: top-k of softmax(z − λφ)
        hand = torch.topk(F.softmax(z - lam * phi, dim=-1), 2, dim=-1).indices
        assert _sets(call.index) == _sets(hand)
    # the edit changed routing somewhere (λ = 2 on widened routers)
    with attach(model, adapter, record=True) as plain:
        model(input_ids=_ids(1), attention_mask=torch.ones(3, 9, dtype=torch.long))
    plain_call = next(c for c in plain.records if c.layer == layer)
    assert _sets(plain_call.index) != _sets(call.index)


def test_masked_expert_is_never_selected(family):
    arch, model, adapter = family
    with attach(model, adapter, record=True) as plain:
        model(input_ids=_ids(2), attention_mask=torch.ones(3, 9, dtype=torch.long))
    layer = plain.records[-1].layer
    counts = torch.bincount(plain.records[-1].index.flatten(), minlength=8)
    popular = counts.topk(3).indices.tolist()  # the three busiest experts of that layer
    assert counts[popular].sum() > 0
    with attach(model, adapter, edit=RoutingEdit.mask({layer: popular}), record=True) as s:
        model(input_ids=_ids(2), attention_mask=torch.ones(3, 9, dtype=torch.long))
    idx = next(c for c in s.records if c.layer == layer).index
    assert not set(idx.flatten().tolist()) & set(popular)
    assert (torch.isneginf(s.records[-1].logits[:, popular])).all()


def test_steer_forces_experts_on_and_off(family):
    arch, model, adapter = family
    routers = find_routers(model, adapter)
    layer = max(routers)
    with attach(model, adapter, record=True) as plain:
        model(input_ids=_ids(4), attention_mask=torch.ones(3, 9, dtype=torch.long))
    counts = torch.bincount(plain.records[-1].index.flatten(), minlength=8)
    rare, busy = int(counts.argmin()), int(counts.argmax())
    seen, handles = _capture_router_inputs(model, adapter)
    edit = RoutingEdit.steer(activate={layer: [rare]}, deactivate={layer: [busy]})
    try:
        with attach(model, adapter, edit=edit, record=True) as s:
            model(input_ids=_ids(4), attention_mask=torch.ones(3, 9, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    call = next(c for c in s.records if c.layer == layer)
    assert all(busy not in row for row in call.index.tolist()), "forced-off expert selected"
    if adapter.family == "DeepSeek-V3":
        # V3 chooses on sigmoid + e_score_correction_bias (and group limits): a logit at
        # max + ε wins only where the correction bias lets it (docs/routers.md pitfall 6).
        assert (call.index == rare).sum() > (plain.records[-1].index == rare).sum()
    else:
        assert all(rare in row for row in call.index.tolist()), "forced-on expert missing"
    # by hand, docs/method.md §6: s = log_softmax(z); s_rare = max(s)+ε; s_busy = min(s)−ε
    hidden = seen[layer].reshape(-1, routers[layer].weight.shape[1])
    z = F.linear(hidden, routers[layer].weight, getattr(routers[layer], "bias", None)).float()
    s_hand = F.log_softmax(z, dim=-1)
    mx, mn = s_hand.max(-1).values, s_hand.min(-1).values
    s_hand[:, rare], s_hand[:, busy] = mx + STEER_EPS, mn - STEER_EPS
    torch.testing.assert_close(F.softmax(call.logits, -1), F.softmax(s_hand, -1))
    torch.testing.assert_close(call.logits, s_hand + torch.logsumexp(z, -1, keepdim=True))


@pytest.mark.parametrize("arch", tm.SHARED_EXPERT_FAMILIES)
def test_shared_expert_output_unchanged(arch):
    model, adapter = tm.build(arch)
    routers = find_routers(model, adapter)
    layer = max(routers)
    block = dict(model.named_modules())[f"model.layers.{layer}.mlp"]
    shared = getattr(block, adapter.shared_expert_attr)
    outs = []
    h = shared.register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    try:
        with attach(model, adapter, record=True):
            model(input_ids=_ids(5), attention_mask=torch.ones(3, 9, dtype=torch.long))
        edit = RoutingEdit.mask({layer: [0, 1, 2]}) | RoutingEdit.steer(activate={layer: [5]})
        with attach(model, adapter, edit=edit, record=True) as s:
            model(input_ids=_ids(5), attention_mask=torch.ones(3, 9, dtype=torch.long))
    finally:
        h.remove()
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert all(5 in row for row in s.records[-1].index.tolist())  # while the routed choice did change


def test_hooks_removed_after_context(family):
    arch, model, adapter = family
    routers = find_routers(model, adapter)
    before = {k: len(r._forward_hooks) for k, r in routers.items()}
    with pytest.raises(RuntimeError):
        with attach(model, adapter, edit=RoutingEdit.mask({max(routers): [0]})):
            raise RuntimeError("boom")
    assert {k: len(r._forward_hooks) for k, r in routers.items()} == before


# ---- refusals before any forward pass -----------------------------------------------------
@pytest.fixture(scope="module")
def olmoe():
    return tm.build("OlmoeForCausalLM")


def _refused(model, adapter, edit, match):
    calls = []
    h = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(RoutelabError, match=match):
            with attach(model, adapter, edit=edit):
                model(input_ids=_ids())
    finally:
        h.remove()
    assert calls == []


def test_bad_profiles_are_refused(olmoe):
    import polars as pl

    model, adapter = olmoe
    wrong_k = pl.DataFrame({"layer": [0] * 6, "expert": list(range(6)), "phi": [0.1] * 6})
    _refused(model, adapter, RoutingEdit.arr(wrong_k, 1.0), r"shape \(6,\), expected \(8,\)")
    with pytest.raises(RoutelabError, match="NaN"):
        RoutingEdit.arr(pl.DataFrame({"layer": [0] * 8, "expert": list(range(8)), "phi": [float("nan")] * 8}), 1.0)
    with pytest.raises(RoutelabError, match="lacks columns"):
        RoutingEdit.arr(pl.DataFrame({"layer": [0], "expert": [0]}), 1.0)
    _refused(model, adapter, RoutingEdit.mask({0: list(range(7))}), "fewer than k=2 experts")
    _refused(model, adapter, RoutingEdit.mask({7: [0]}), "not an MoE layer")
    _refused(model, adapter, RoutingEdit.steer(activate={0: [1, 2, 3]}), "more than k=2")


def test_edits_compose_across_layers(olmoe):
    model, adapter = olmoe
    edit = RoutingEdit.mask({0: [0, 1]}) | RoutingEdit.mask({2: [3]}) | RoutingEdit.mask({0: [4]})
    with attach(model, adapter, edit=edit, record=True) as s:
        model(input_ids=_ids(), attention_mask=torch.ones(3, 9, dtype=torch.long))
    by_layer = {c.layer: set(c.index.flatten().tolist()) for c in s.records}
    assert not by_layer[0] & {0, 1, 4} and 3 not in by_layer[2]


def test_parity_check_fails_loudly_when_routing_rule_differs(olmoe):
    import dataclasses

    from routelab.adapters.base import softmax_topk

    model, adapter = olmoe
    wrong = dataclasses.replace(adapter, rule=lambda r, z: softmax_topk(r, -z))  # a "changed release"
    with pytest.raises(RoutelabError, match=r"parity check failed .* transformers 5\."):
        with attach(model, wrong):
            pass


def test_unknown_architecture_names_supported_families():
    from transformers import LlamaConfig

    from routelab.adapters import adapter_for_config

    with pytest.raises(RoutelabError) as err:
        adapter_for_config(LlamaConfig(architectures=["LlamaForCausalLM"]))
    msg = str(err.value)
    assert "LlamaForCausalLM" in msg
    for fam in ("OLMoE", "Mixtral", "Qwen2-MoE", "Qwen3-MoE", "DeepSeek-V2", "DeepSeek-V3", "GPT-OSS", "Phi-3.5-MoE", "DeepSeekMoE"):
        assert fam in msg


def test_switched_off_experts_counted_together_and_conflicts_refused(olmoe):
    model, adapter = olmoe
    # 4 masked + 3 deactivated = 7 of 8 switched off: fewer than k=2 left, though each alone is fine
    edit = RoutingEdit.mask({0: [0, 1, 2, 3]}) | RoutingEdit.steer(deactivate={0: [4, 5, 6]})
    _refused(model, adapter, edit, "fewer than k=2 experts")
    _refused(model, adapter, RoutingEdit.mask({0: [3]}) | RoutingEdit.steer(activate={0: [3]}), "activated and masked")


def test_nested_attach_is_refused(olmoe):
    model, adapter = olmoe
    with attach(model, adapter, edit=RoutingEdit.mask({0: [1]})):
        with pytest.raises(RoutelabError, match="already attached"):
            with attach(model, adapter, record=True):
                pass
    with attach(model, adapter, record=True):  # released after the outer block
        pass


def test_strong_penalty_selects_by_logits_not_by_underflowed_ties(olmoe):
    """λφ so large that penalised probabilities underflow to 0: the choice among them must
    still follow their logits (docs/routers.md pitfall 2), never arbitrary ties."""
    import polars as pl

    model, adapter = olmoe
    phi = [0.0] + [1.0] * 7  # expert 0 free, all others penalised by λ = 1e4
    table = pl.DataFrame({"layer": [0] * 8, "expert": list(range(8)), "phi": phi})
    seen, handles = _capture_router_inputs(model, adapter)
    try:
        with attach(model, adapter, edit=RoutingEdit.arr(table, 1e4, layers=[0]), record=True) as s:
            model(input_ids=_ids(6), attention_mask=torch.ones(3, 9, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    call = next(c for c in s.records if c.layer == 0)
    router = find_routers(model, adapter)[0]
    z = F.linear(seen[0].reshape(-1, router.weight.shape[1]), router.weight).float() - 1e4 * torch.tensor(phi)
    assert (F.softmax(z, -1)[:, 1:] == 0).all()  # the penalised experts really underflow
    assert _sets(call.index) == _sets(torch.topk(z, 2, dim=-1).indices)
    assert all(0 in row for row in call.index.tolist())


# ---- per-row conditions: C edits in one batched forward ---------------------------------------
def test_per_row_conditions_equal_separate_runs(family):
    """Row b runs under condition ids[b]; every row must equal a separate run under that edit."""
    import polars as pl

    arch, model, adapter = family
    routers = find_routers(model, adapter)
    first, last = min(routers), max(routers)
    phi = torch.linspace(0, 1, 8)[torch.randperm(8, generator=torch.Generator().manual_seed(7))]
    table = pl.DataFrame({"layer": [last] * 8, "expert": list(range(8)), "phi": phi.tolist()})
    conditions = [
        None,  # baseline: no edit
        RoutingEdit.arr(table, 2.0),  # ARR on the last layer only
        RoutingEdit.mask({first: [0, 1]}) | RoutingEdit.steer(deactivate={last: [3]}),
    ]
    ids = [0, 1, 2, 1, 0, 2]
    x = _ids(11, shape=(len(ids), 7))
    mask = torch.ones_like(x)
    with torch.no_grad(), attach(model, adapter, conditions=conditions, record=True) as s:
        s.use_conditions(ids)
        together = model(input_ids=x, attention_mask=mask).logits  # (6, 7, V)
    for c, edit in enumerate(conditions):
        rows = [b for b, i in enumerate(ids) if i == c]
        with torch.no_grad(), attach(model, adapter, edit=edit) as _:
            alone = model(input_ids=x[rows], attention_mask=mask[rows]).logits
        torch.testing.assert_close(together[rows], alone, rtol=1e-5, atol=1e-5)
    # the conditions really differ (else the test would pass for a hook that ignores ids)
    assert not torch.allclose(together[0], together[1], atol=1e-4) or not torch.allclose(together[0], together[2], atol=1e-4)
    # a masked expert never appears in condition 2's rows at the first MoE layer
    call = next(r for r in s.records if r.layer == first)
    rows2 = torch.tensor([i == 2 for i in ids]).repeat_interleave(7)
    assert not (set(call.index[rows2].flatten().tolist()) & {0, 1})
    assert set(call.index[~rows2].flatten().tolist()) & {0, 1}, "unmasked rows should still use experts 0/1"


def test_per_row_conditions_need_ids_and_counts_calls(olmoe):
    model, adapter = olmoe
    with attach(model, adapter, conditions=[None, RoutingEdit.mask({0: [1]})]) as s:
        with pytest.raises(RoutelabError, match="use_conditions"):
            model(input_ids=_ids(), attention_mask=torch.ones(3, 9, dtype=torch.long))
        with pytest.raises(RoutelabError, match="outside 0..1"):
            s.use_conditions([0, 2, 1])
        s.use_conditions([0, 1, 1])
        s.calls.clear(), s.tokens.clear()
        model(input_ids=_ids(), attention_mask=torch.ones(3, 9, dtype=torch.long))
    assert s.calls == {layer: 1 for layer in s.moe_layers} and s.tokens == {layer: 27 for layer in s.moe_layers}


@pytest.mark.parametrize("arch", tm.FAMILIES)
def test_layer_fork_scores_equal_separate_runs(arch):
    """Conditions that start at different layers, scored in one forked forward, equal separate
    runs of each condition (the shared layers are computed once)."""
    import polars as pl

    from routelab.routing import LayerFork
    from routelab.scoring import score_tokens, score_tokens_forked

    model, adapter = tm.build(arch)
    routers = sorted(find_routers(model, adapter))
    first, last = routers[0], routers[-1]
    if not adapter.layer_fork:  # GPT-OSS: refused with a clear error; the engine scores it unforked
        with attach(model, adapter, conditions=[None, None]) as s:
            with pytest.raises(RoutelabError, match="cannot take added rows"):
                LayerFork(model, s, [first])
        return
    phi = torch.linspace(0, 1, 8)
    table = pl.DataFrame({"layer": [last] * 8, "expert": list(range(8)), "phi": phi.tolist()})
    conditions = [RoutingEdit.arr(table, 3.0), RoutingEdit.mask({first: [0, 1, 2]}), None,
                  RoutingEdit.mask({last: [4]}) | RoutingEdit.arr(table, 1.0)]
    firsts = [last, first, None, last]
    gen = torch.Generator().manual_seed(5)
    reqs = [(torch.randint(1, 64, (int(n),), generator=gen).tolist(), torch.randint(1, 64, (3,), generator=gen).tolist())
            for n in torch.randint(1, 7, (10,), generator=gen)]
    with attach(model, adapter, conditions=[*conditions, None]) as s:
        fork = LayerFork(model, s, firsts)
        together = score_tokens_forked(model, reqs, fork, len(conditions), batch_size=4, progress=False)
    for c, edit in enumerate(conditions):
        with attach(model, adapter, edit=edit):
            alone = score_tokens(model, reqs, batch_size=4, progress=False)
        for i, ll in enumerate(alone):
            assert together[i][c].logprob == pytest.approx(ll.logprob, abs=1e-5), (arch, c, i)
    assert any(abs(together[i][0].logprob - together[i][2].logprob) > 1e-3 for i in range(len(reqs)))
