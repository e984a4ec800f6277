"""The batched scorer against a straightforward one-sequence-at-a-time computation.

Run: .venv/bin/pytest tests/test_scoring.py
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers

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


def test_without_logits_to_keep_same_result(lm):
    """A model whose forward has no logits_to_keep goes through the plain slicing path."""
    model, tok = lm

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    a = score(model, tok, REQUESTS, batch_size=4, progress=False)
    b = score(Plain(model), tok, REQUESTS, batch_size=4, progress=False)
    for x, y in zip(a, b):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-5)


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
