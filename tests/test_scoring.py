"""The batched scorer against a straightforward one-sequence-at-a-time computation.

Run: .venv/bin/pytest tests/test_scoring.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

import tiny_models as tm
from routelab.errors import RoutelabError
from routelab.scoring import (
    LL,
    encode_pair,
    perplexity,
    prefix_token_id,
    rolling_loglikelihood,
    rolling_windows,
    score,
    score_tokens,
)


def tiny_olmoe(seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A random-init OLMoE over ByT5's byte vocabulary (no files, no network)."""
    torch.manual_seed(seed)
    cfg = transformers.OlmoeConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = transformers.OlmoeForCausalLM(cfg).eval()
    return model, transformers.ByT5Tokenizer()


@pytest.fixture(scope="module")
def lm():
    return tiny_olmoe()


# Varied lengths (bytes = tokens for ByT5) so every batch really pads; one empty context.
REQUESTS = [
    ("The doctor carefully examined", " the patient."),
    ("Q: Who was there?\nA:", " Nobody"),
    ("", "A sentence scored after the prefix token."),
    ("x", "y"),
    ("A much longer context that goes on and on for a while, to force padding", " ok"),
    ("Trailing space context ", "moves"),
    ("Short", " continuation that is itself rather long, longer than its context"),
    ("", "z"),
]


def reference_ll(model, ctx_ids: list[int], cont_ids: list[int]) -> tuple[float, bool]:
    """One sequence, no padding, full forward, log_softmax by hand."""
    full = torch.tensor([ctx_ids + cont_ids])  # (1, L)
    with torch.no_grad():
        logits = model(input_ids=full).logits[0]  # (L, V)
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (L, V)
    total, greedy = 0.0, True
    for j, tok in enumerate(cont_ids):
        pos = len(ctx_ids) - 1 + j  # the logit at pos predicts token pos + 1
        total += float(logp[pos, tok])
        greedy &= int(logits[pos].argmax()) == tok
    return total, greedy


def test_encode_pair_follows_lm_eval(lm):
    _, tok = lm
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    # trailing whitespace of the context moves to the continuation
    assert encode_pair(tok, "Q: a ", "b") == (enc("Q: a"), enc(" b"))
    assert encode_pair(tok, "ctx", " cont") == (enc("ctx"), enc(" cont"))
    # empty context -> [BOS]; ByT5 has no BOS, so EOS (id 1)
    assert tok.bos_token_id is None and prefix_token_id(tok) == 1
    assert encode_pair(tok, "", "abc") == ([1], enc("abc"))
    with pytest.raises(RoutelabError, match="empty continuation"):
        encode_pair(tok, "ctx", "")


def test_prefix_prefers_bos():
    class Stub:
        bos_token_id, eos_token_id = 7, 9

    assert prefix_token_id(Stub()) == 7
    Stub.bos_token_id = None
    assert prefix_token_id(Stub()) == 9
    Stub.eos_token_id = None
    with pytest.raises(RoutelabError, match="neither a BOS nor an EOS"):
        prefix_token_id(Stub())


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_equals_reference(lm, batch_size):
    model, tok = lm
    got = score(model, tok, REQUESTS, batch_size=batch_size, progress=False)
    assert len(got) == len(REQUESTS)
    for (ctx, cont), ll in zip(REQUESTS, got):
        ctx_ids, cont_ids = encode_pair(tok, ctx, cont)
        ref, ref_greedy = reference_ll(model, ctx_ids, cont_ids)
        assert ll.n_tokens == len(cont_ids)
        assert ll.logprob == pytest.approx(ref, abs=1e-4), (ctx, cont, ll.logprob, ref)
        assert ll.greedy == ref_greedy
        assert ll.logprob < 0


def test_without_attention_mask_same_scores(lm):
    """Right padding + causal attention: leaving the mask out changes nothing."""
    model, tok = lm
    a = score(model, tok, REQUESTS, batch_size=8, progress=False)
    b = score(model, tok, REQUESTS, batch_size=8, progress=False, attention_mask=False)
    assert [x.logprob for x in b] == pytest.approx([x.logprob for x in a], abs=1e-5)


def test_empty_context_is_scored_after_prefix(lm):
    model, tok = lm
    (ll,) = score(model, tok, [("", "hello")], progress=False)
    ref, _ = reference_ll(model, [1], tok("hello", add_special_tokens=False)["input_ids"])
    assert ll.logprob == pytest.approx(ref, abs=1e-4)
    assert ll.n_tokens == 5


def test_a_model_without_decoder_and_head_is_refused(lm):
    """The scorer runs the decoder and applies the output head itself: a bare forward is not enough."""
    model, tok = lm

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    with pytest.raises(RoutelabError, match=r"get_decoder\(\)\) and output head \(get_output_embeddings"):
        score(Plain(model), tok, REQUESTS, progress=False)


def test_truncation_keeps_the_right_end(lm):
    model, tok = lm
    ctx, cont = "0123456789abcdefghij", "XYZ"
    (ll,) = score(model, tok, [(ctx, cont)], max_length=10, progress=False)
    ctx_ids, cont_ids = encode_pair(tok, ctx, cont)
    seq = (ctx_ids + cont_ids)[-11:]  # lm-eval: (ctx + cont)[-(max_length + 1):]
    ref, _ = reference_ll(model, seq[:-3], seq[-3:])
    assert ll.logprob == pytest.approx(ref, abs=1e-4)
    with pytest.raises(RoutelabError, match="rolling_loglikelihood"):
        score(model, tok, [("a", "b" * 20)], max_length=10, progress=False)


def test_edits_are_seen_no_caching(lm):
    """A hook installed between two calls changes the scores; removing it restores them."""
    model, tok = lm
    before = score(model, tok, REQUESTS[:3], progress=False)
    gate = model.model.layers[0].mlp.gate

    def flip(module, args, out):  # reverse expert preference in layer 0
        logits, scores, idx = out
        return logits, scores, (module.num_experts - 1) - idx

    handle = gate.register_forward_hook(flip)
    try:
        during = score(model, tok, REQUESTS[:3], progress=False)
    finally:
        handle.remove()
    after = score(model, tok, REQUESTS[:3], progress=False)
    assert any(abs(a.logprob - d.logprob) > 1e-3 for a, d in zip(before, during))
    assert [a.logprob for a in after] == pytest.approx([b.logprob for b in before], abs=1e-6)


def test_training_mode_restored(lm):
    model, tok = lm
    model.train()
    try:
        score(model, tok, REQUESTS[:2], progress=False)
        assert model.training
    finally:
        model.eval()


def test_token_requests_validated(lm):
    model, _ = lm
    with pytest.raises(RoutelabError, match="non-empty"):
        score_tokens(model, [([], [5])], progress=False)
    assert score_tokens(model, [], progress=False) == []


def test_rolling_windows_cover_every_token_once():
    toks = list(range(10, 33))  # 23 tokens
    wins = rolling_windows(toks, prefix=1, max_length=8)
    assert [t for _, cont in wins for t in cont] == toks
    assert wins[0][0] == [1]
    for ctx, cont in wins:
        assert len(ctx) + len(cont) - 1 <= 8  # inputs fit
        assert len(ctx) >= 1
    # later windows continue right after what came before
    assert wins[1] == ([17], toks[8:16])
    assert wins[2] == (toks[0:16][-(9 - 7) :], toks[16:])


def test_rolling_loglikelihood_and_perplexity(lm):
    model, tok = lm
    texts = ["a short text", "another, somewhat longer text for the rolling scorer"]
    whole = rolling_loglikelihood(model, tok, texts, progress=False)
    direct = score(model, tok, [("", t) for t in texts], progress=False)
    for w, d, t in zip(whole, direct, texts):
        assert w.n_tokens == len(t.encode())
        assert w.logprob == pytest.approx(d.logprob, abs=1e-4)
    # windows of 16 tokens: same token count, every window's LL from its own reference
    windowed = rolling_loglikelihood(model, tok, texts, max_length=16, progress=False)
    toks = tok(texts[1], add_special_tokens=False)["input_ids"]
    ref = sum(reference_ll(model, c, k)[0] for c, k in rolling_windows(toks, 1, 16))
    assert windowed[1].logprob == pytest.approx(ref, abs=1e-4)
    assert windowed[1].n_tokens == len(toks)
    # token-weighted perplexity
    lls = [LL(-10.0, 4, False), LL(-2.0, 2, False)]
    assert perplexity(lls) == pytest.approx(math.exp(12 / 6))
    with pytest.raises(RoutelabError):
        perplexity([])


# --------------------------------------------------------------------------------------------
# Issue 20: logits memory bounded by max_logits_bytes; token-level scores
# --------------------------------------------------------------------------------------------


def olmoe_of_testbed_size(seed: int = 0) -> torch.nn.Module:
    """A random OLMoE with the testbeds' sizes (vocabulary 215, hidden 128, 4 layers, 16 experts top-2)."""
    torch.manual_seed(seed)
    cfg = transformers.OlmoeConfig(vocab_size=215, hidden_size=128, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=4, num_experts=16,
                                   num_experts_per_tok=2, max_position_embeddings=256, norm_topk_prob=False)
    return transformers.OlmoeForCausalLM(cfg).eval()


def random_requests(n: int, vocab: int, ctx: tuple[int, int], cont: tuple[int, int], seed: int = 0):
    """``n`` token requests with context and continuation lengths drawn from the given ranges."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> list[int]:
        length = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(1, vocab, (length,), generator=gen).tolist()

    return [(draw(*ctx), draw(*cont)) for _ in range(n)]


def todays_scores(model, requests, batch_size, fork=None, n_conditions=1):
    """The scorer before issue 20, on the same batches: the model's forward with ``logits_to_keep``
    from the batch's first scored position, then z_target − logsumexp(z) summed per row. A
    bit-exact reference: [(logprob, greedy)] per request (per condition with a fork)."""
    from routelab.scoring import _batch, _longest_first

    out = {}
    order = _longest_first(requests)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            chunk = order[s : s + batch_size]
            inp, attn, tgt, is_cont, first, _ = _batch(requests, chunk, None, 0)  # (B, T) each
            kwargs = dict(input_ids=inp, logits_to_keep=torch.arange(first, inp.shape[1]), use_cache=False)
            if fork is None:
                logits = model(**kwargs, attention_mask=attn).logits.float()  # (B, T', V)
                blocks = [slice(0, len(chunk))]
            else:
                with fork.batch(len(chunk)):
                    logits = model(**kwargs).logits.float()  # (R·B, T', V)
                blocks = [fork.rows(c, len(chunk)) for c in range(n_conditions)]
            tgt, mask = tgt[:, first:], is_cont[:, first:]  # (B, T')
            per = []
            for rows in blocks:
                z = logits[rows].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T')
                ll = torch.where(mask, z - torch.logsumexp(logits[rows], dim=-1), torch.zeros_like(z)).sum(dim=-1)
                greedy = ((logits[rows].argmax(dim=-1) == tgt) | ~mask).all(dim=-1)
                per.append((ll.tolist(), greedy.tolist()))
            for b, i in enumerate(chunk):
                out[i] = [(ll[b], g[b]) for ll, g in per]
    return [out[i] if fork is not None else out[i][0] for i in range(len(requests))]


def test_default_budget_is_bit_identical_to_todays_scorer_on_testbed_sizes():
    """Vocabulary 215, testbed-length requests: the default budget takes the one-chunk path, so every
    log-likelihood equals the old scorer's float for float (the committed pipeline outputs stay)."""
    model = olmoe_of_testbed_size()
    reqs = (random_requests(40, 215, (1, 12), (3, 14), seed=1)  # CrowS-like: short, BOS-only contexts
            + random_requests(40, 215, (30, 125), (1, 6), seed=2)  # TruthfulQA-like: primer + question
            + random_requests(8, 215, (1, 1), (100, 255), seed=3))  # perplexity-like: whole passages
    for batch_size in (32, 7):
        got = score_tokens(model, reqs, batch_size=batch_size, progress=False)
        ref = todays_scores(model, reqs, batch_size)
        assert [(x.logprob, x.greedy) for x in got] == ref  # exact floats, no tolerance


def test_default_budget_forked_is_bit_identical_to_todays_forked_scorer():
    from routelab.adapters import adapter_by_name
    from routelab.routing import LayerFork, RoutingEdit, attach
    from routelab.scoring import score_tokens_forked

    model, adapter = olmoe_of_testbed_size(), adapter_by_name("OlmoeForCausalLM")
    conditions = [RoutingEdit.mask({1: [0, 1, 2]}), None, RoutingEdit.mask({3: [4]})]
    firsts = [1, None, 3]
    reqs = random_requests(30, 215, (1, 60), (1, 10), seed=4)
    with attach(model, adapter, conditions=[*conditions, None]) as s:
        got = score_tokens_forked(model, reqs, LayerFork(model, s, firsts), 3, batch_size=8, progress=False)
        ref = todays_scores(model, reqs, 8, fork=LayerFork(model, s, firsts), n_conditions=3)
    assert [[(x.logprob, x.greedy) for x in row] for row in got] == ref


def close(x: float, ref: float) -> bool:
    """Equal within 1e-5, widened by two float32 ulps of the value: a float32 sum cannot resolve
    finer (its ulp is 3e-5 at |LL| = 389, a 65-byte continuation of the ByT5 model)."""
    return abs(x - ref) <= 1e-5 + 2 * float(np.spacing(np.float32(abs(ref))))


class HeadRows:
    """Counts the rows the output head computes logits for, call by call."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.handle = model.get_output_embeddings().register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.calls.append(out.numel() // out.shape[-1])


@pytest.mark.parametrize("positions_per_chunk", [1, 3, 50])
def test_chunked_scores_equal_the_reference_and_hold_at_most_the_budget(lm, positions_per_chunk):
    """Past the budget: each head call fits in it, only continuation positions are computed, and the
    scores are the one-sequence reference's (1e-5) with the same greedy flags."""
    from routelab.scoring import LOGIT_BYTES

    model, tok = lm
    V = model.config.vocab_size
    budget = positions_per_chunk * LOGIT_BYTES * V
    token_reqs = [encode_pair(tok, c, k) for c, k in REQUESTS]
    rows = HeadRows(model)
    try:
        got = score(model, tok, REQUESTS, batch_size=4, progress=False, max_logits_bytes=budget)
    finally:
        rows.handle.remove()
    assert max(rows.calls) * LOGIT_BYTES * V <= budget
    assert sum(rows.calls) == sum(len(k) for _, k in token_reqs)  # per row: no context position
    one_chunk = score(model, tok, REQUESTS, batch_size=4, progress=False)
    for (c, k), ll, today in zip(token_reqs, got, one_chunk):
        ref, ref_greedy = reference_ll(model, c, k)
        assert close(ll.logprob, ref) and ll.greedy == ref_greedy, (ll.logprob, ref)
        assert close(ll.logprob, today.logprob) and ll.greedy == today.greedy


def test_token_level_scores(lm):
    """token_logprobs sum to logprob; tokens are the continuation ids, after truncation; off by default."""
    from routelab.scoring import LOGIT_BYTES

    model, tok = lm
    plain = score(model, tok, REQUESTS, batch_size=3, progress=False)
    assert all(x.token_logprobs is None and x.tokens is None for x in plain)
    for budget in (None, 5 * LOGIT_BYTES * model.config.vocab_size):  # one chunk, then chunked
        kw = {} if budget is None else {"max_logits_bytes": budget}
        got = score(model, tok, REQUESTS, batch_size=3, progress=False, token_level=True, **kw)
        for (ctx, cont), ll, p in zip(REQUESTS, got, plain):
            assert ll.tokens == tuple(encode_pair(tok, ctx, cont)[1])
            assert len(ll.token_logprobs) == ll.n_tokens == len(ll.tokens)
            assert close(sum(ll.token_logprobs), ll.logprob)
            assert close(ll.logprob, p.logprob)
    # truncation drops context from the left: the continuation is whole
    (ll,) = score(model, tok, [("0123456789abcdefghij", "XYZ")], max_length=10, progress=False, token_level=True)
    assert ll.tokens == tuple(tok("XYZ", add_special_tokens=False)["input_ids"])
    # rolling windows join in text order
    text = "another, somewhat longer text for the rolling scorer"
    (whole,) = rolling_loglikelihood(model, tok, [text], max_length=16, progress=False, token_level=True)
    assert whole.tokens == tuple(tok(text, add_special_tokens=False)["input_ids"])
    assert close(sum(whole.token_logprobs), whole.logprob)


@pytest.mark.parametrize("bad", [0, -5, "lots", 1.5, True, None, 100])
def test_a_bad_budget_is_one_error_naming_the_setting(lm, bad):
    model, tok = lm
    with pytest.raises(RoutelabError, match=r"^max_logits_bytes .*(whole number of bytes|bench_baseline\.max_logits_bytes"
                                            r" \(routelab bench: --max-logits-bytes\) to at least 3072)"):
        score(model, tok, REQUESTS[:1], progress=False, max_logits_bytes=bad)


@pytest.mark.parametrize("arch", tm.FAMILIES)
def test_chunked_scorer_matches_each_familys_own_forward(arch):
    """Per family: the scorer (one chunk and chunked) gives the plain forward's log-likelihoods (1e-5) and
    greedy flags, and the routing hooks inside the decoder fire as before."""
    from routelab.routing import attach
    from routelab.scoring import LOGIT_BYTES

    model, adapter = tm.build(arch)
    head = model.get_output_embeddings()
    if arch == "PhimoeForCausalLM":  # Phi-3.5-MoE's head can carry a bias (config.lm_head_bias)
        head.bias = torch.nn.Parameter(torch.randn(head.out_features, generator=torch.Generator().manual_seed(0)))
    V = head.weight.shape[0]
    reqs = random_requests(12, V, (1, 40), (1, 12), seed=7)
    refs = [reference_ll(model, c, k) for c, k in reqs]
    for budget in (None, 7 * LOGIT_BYTES * V):
        kw = {} if budget is None else {"max_logits_bytes": budget}
        with attach(model, adapter) as session:
            got = score_tokens(model, reqs, batch_size=5, progress=False, **kw)
        assert session.calls and set(session.calls) == set(session.moe_layers), arch
        for ll, (ref, ref_greedy) in zip(got, refs):
            assert close(ll.logprob, ref), (arch, budget, ll.logprob, ref)
            assert ll.greedy == ref_greedy, (arch, budget)
