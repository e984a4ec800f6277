"""The generation engine: batched, left-padded, KV-cached decoding under per-row conditions."""

from __future__ import annotations

import polars as pl
import pytest
import torch

import tiny_models as tm
from routelab.errors import RoutelabError
from routelab.generation import DecodeParams, generate
from routelab.models import ModelSpec, load_model
from routelab.routing import RoutingEdit, attach

PROMPTS = ["the female doctor", "a kind nurse , and the old", "the", "the young male engineer is kind ."]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tm.save_tiny_olmoe(tmp_path_factory.mktemp("gen") / "model", seed=3)
    lm = load_model(ModelSpec(path=str(path), dtype="float32", device="cpu"))
    with torch.no_grad():  # experts strong enough that changing the route changes the text
        gen = torch.Generator().manual_seed(0)
        for layer in lm.model.model.layers:
            for p in layer.mlp.experts.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return lm


def _plain_generate(lm, text, n):
    ids = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = lm.model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
                                eos_token_id=None)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_greedy_without_edit_equals_plain_generate_one_prompt_at_a_time(lm):
    gens = generate(lm, PROMPTS, DecodeParams(max_new_tokens=6, batch_size=3), show_progress=False)
    lm.tokenizer.eos_token_id, eos = None, lm.tokenizer.eos_token_id  # plain generate must not stop early either
    try:
        gens_noeos = generate(lm, PROMPTS, DecodeParams(max_new_tokens=6, batch_size=4), show_progress=False)
    finally:
        lm.tokenizer.eos_token_id = eos
    for g in gens_noeos:
        assert list(g.token_ids) == _plain_generate(lm, PROMPTS[g.prompt_index], 6), g.prompt
    # with EOS active, a row stops at EOS and keeps the same prefix
    for a, b in zip(gens, gens_noeos):
        assert list(b.token_ids[: len(a.token_ids)]) == list(a.token_ids)


def test_kv_cache_and_cache_free_decoding_agree(lm):
    p = DecodeParams(max_new_tokens=5, batch_size=4)
    with_cache = generate(lm, PROMPTS, p, show_progress=False)
    lm.adapter = __import__("dataclasses").replace(lm.adapter, kv_cache=False)
    try:
        without = generate(lm, PROMPTS, p, show_progress=False)
    finally:
        lm.adapter = __import__("dataclasses").replace(lm.adapter, kv_cache=True)
    assert [g.token_ids for g in with_cache] == [g.token_ids for g in without]


def test_conditions_per_row_equal_separate_runs_and_edit_runs_every_step(lm):
    edit = RoutingEdit.mask({1: [0, 1, 2, 3]}) | RoutingEdit.mask({2: [4, 5, 6]})
    p = DecodeParams(max_new_tokens=5, batch_size=8)
    lm.tokenizer.eos_token_id, eos = None, lm.tokenizer.eos_token_id
    try:
        together = generate(lm, PROMPTS, p, conditions=[None, edit], show_progress=False)
        base = generate(lm, PROMPTS, p, conditions=[None], show_progress=False)
        edited = generate(lm, PROMPTS, p, conditions=[edit], show_progress=False)
    finally:
        lm.tokenizer.eos_token_id = eos
    assert [g.token_ids for g in together if g.condition == 0] == [g.token_ids for g in base]
    assert [g.token_ids for g in together if g.condition == 1] == [g.token_ids for g in edited]
    assert [g.token_ids for g in base] != [g.token_ids for g in edited], "the edit should change some text"


def test_router_hook_fires_at_prefill_and_every_decoding_step(lm):
    """With the KV cache: 1 prefill call over B·T tokens, then one call per new token over B rows."""
    from routelab.generation import _decode_batch

    tok = lm.tokenizer
    ids = [tok(t)["input_ids"] for t in PROMPTS]
    B, T, n = len(ids), max(map(len, ids)), 4
    tok.eos_token_id, eos = None, tok.eos_token_id
    try:
        with attach(lm, conditions=[RoutingEdit.mask({1: [0]})], record=True) as s:
            s.use_conditions([0] * B)
            _decode_batch(lm.model, tok, ids, DecodeParams(max_new_tokens=n), [None] * B, kv_cache=True)
    finally:
        tok.eos_token_id = eos
    assert s.calls == {layer: n for layer in s.moe_layers}
    assert s.tokens == {layer: B * T + B * (n - 1) for layer in s.moe_layers}
    assert all(0 not in c.index.flatten().tolist() for c in s.records if c.layer == 1)  # masked at every step


@pytest.mark.parametrize("kv_cache", [True, False])
def test_only_the_last_positions_logits_are_computed_at_prefill_and_every_step(lm, kv_cache):
    """The head sees (B, H) at every forward (transformers' logits_to_keep=1): never (B, T, V) logits."""
    from routelab.generation import _decode_batch

    tok, head = lm.tokenizer, lm.model.get_output_embeddings()
    ids = [tok(t)["input_ids"] for t in PROMPTS]
    shapes = []
    handle = head.register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    tok.eos_token_id, eos = None, tok.eos_token_id
    try:
        with attach(lm, conditions=[None]) as s:
            s.use_conditions([0] * len(ids))
            _decode_batch(lm.model, tok, ids, DecodeParams(max_new_tokens=4), [None] * len(ids), kv_cache=kv_cache)
    finally:
        handle.remove()
        tok.eos_token_id = eos
    assert shapes == [(len(ids), head.out_features)] * 4  # prefill + 3 steps, one row per prompt each


def test_sampling_is_seeded_per_prompt_and_sample_not_per_batch(lm):
    p = DecodeParams(max_new_tokens=6, strategy="sample", samples=3, temperature=1.5, top_p=0.9, seed=11, batch_size=5)
    a = generate(lm, PROMPTS, p, show_progress=False)
    c = generate(lm, PROMPTS, DecodeParams(**{**p.__dict__, "batch_size": 2}), show_progress=False)
    assert [g.token_ids for g in a] == [g.token_ids for g in c]  # batch layout does not matter
    assert len({g.token_ids for g in a if g.prompt_index == 0}) > 1, "three samples should differ"
    d = generate(lm, PROMPTS, DecodeParams(**{**p.__dict__, "seed": 12}), show_progress=False)
    assert [g.token_ids for g in a] != [g.token_ids for g in d]
    assert len(a) == 12 and all(g.seed is not None for g in a)


def test_top_p_keeps_the_smallest_nucleus():
    from routelab.generation import _nucleus

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_nucleus(logits, 0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7 ≤ 0.5 + 0.3
    assert torch.isfinite(_nucleus(logits, 0.5))[0].tolist() == [True, False, False, False]


def test_bad_decode_params_are_refused():
    with pytest.raises(RoutelabError, match="generation.strategy"):
        DecodeParams(strategy="beam")
    with pytest.raises(RoutelabError, match="generation.top_p"):
        DecodeParams(top_p=0)
    with pytest.raises(RoutelabError, match="generation.max_new_tokens"):
        DecodeParams(max_new_tokens=0)


def test_the_generations_table_holds_each_continuation_with_its_condition_seed_and_scores(lm, tmp_path):
    import json

    from routelab.benchmarks import get_benchmark
    from routelab.conditions import Condition
    from routelab.generation import GenerationParams, run_protocols

    (tmp_path / "design.json").write_text(json.dumps({"own": {"female": ["doctor"], "male": ["nurse"]}}))
    bench = get_benchmark("testbed_completion")
    items = bench.load(tmp_path)
    conditions = [Condition("baseline", "baseline"), Condition("mask", "mask_top", edit=RoutingEdit.mask({0: [1, 2]}))]
    table, rows = run_protocols(lm, {"testbed_completion": (bench, items)}, conditions,
                                GenerationParams(samples=3, max_new_tokens=2, strategy="sample"), {})
    assert table.height == 2 * 2 * 3  # prompts × conditions × samples
    assert set(table["condition"]) == {"baseline", "mask"} and table["seed"].n_unique() == 2 * 3
    for r in table.iter_rows(named=True):  # each row's scores are the protocol's judgement of its text
        item = items[[it["id"] for it in items].index(r["item"])]
        assert {k: r[k] for k in ("names_own_half", "names_profession")} == bench.sample_scores(item, r["continuation"])
    for cond in ("baseline", "mask"):  # per-item rows are the mean of the table's rows
        got = rows[cond]["testbed_completion"].sort("id")
        want = (table.filter(condition=cond).group_by("item").agg(planted=pl.col("names_own_half").mean()).sort("item"))
        assert got["planted"].to_list() == pytest.approx(want["planted"].to_list())
