"""One batched log-likelihood engine for every benchmark (docs/method.md §8).

Usage::

    from routelab.scoring import score, rolling_loglikelihood, perplexity
    lls = score(model, tokenizer, [("The doctor said", " hello"), ("", "A whole sentence.")])
    lls[0].logprob, lls[0].n_tokens, lls[0].greedy

A request is ``(context, continuation)``; its result is the sum of log p(token | prefix) over
the continuation tokens only, the number of continuation tokens (for per-token means and
perplexity) and whether every continuation token is the model's greedy choice.

It follows lm-evaluation-harness's HF backend (``HFLM._encode_pair`` and
``_loglikelihood_tokens``):

* trailing whitespace of the context moves to the continuation, then ``context +
  continuation`` is tokenised whole and split after ``len(tok(context))`` tokens, so the
  continuation tokens are the ones the model really sees in the joint text;
* an empty context becomes the BOS token (EOS when the tokenizer has no BOS);
* requests are sorted longest first (an out-of-memory shows on the first batch, and the first
  item of a batch sets its padded length), batched with right padding and an attention mask,
  then put back in their original order, and every index is checked to have come back.

The engine only calls ``model(...)``: routing edits are hooks installed elsewhere, so the
scores always reflect the edit that is active *now*. Nothing is cached across calls.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch

from routelab.errors import RoutelabError
from routelab.progress import progress as progress_display

Request = tuple[str, str]  # (context, continuation)
TokenRequest = tuple[list[int], list[int]]  # (context token ids, continuation token ids)


@dataclass(frozen=True)
class LL:
    """Log-likelihood of one continuation given its context."""

    logprob: float  # Σ log p(continuation token | prefix), natural log
    n_tokens: int  # number of continuation tokens scored
    greedy: bool  # True when every continuation token is the argmax of its distribution

    @property
    def mean(self) -> float:
        """Mean per-token log-probability (StereoSet's causal-LM score, docs/method.md §8)."""
        return self.logprob / self.n_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Tokenisation (lm-eval's _encode_pair)
# --------------------------------------------------------------------------------------------


def prefix_token_id(tokenizer: Any) -> int:
    """The token that stands in for an empty context: BOS, or EOS when there is no BOS."""
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise RoutelabError(
        f"tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token, so an empty "
        "context cannot be scored: set tokenizer.bos_token (or eos_token) before scoring"
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> TokenRequest:
    """Token ids of (context, continuation) as lm-eval's HF backend makes them.

    Trailing whitespace of the context is moved to the front of the continuation (so
    ``("Q: x\\nA: ", "yes")`` is scored like ``("Q: x\\nA:", " yes")``); the joint text is
    tokenised once and the continuation is everything after the context's own tokens. An
    empty context becomes ``[BOS]`` (``[EOS]`` without BOS), with the continuation tokenised
    alone.
    """
    if not continuation:
        raise RoutelabError(
            f"empty continuation for context {context[-60:]!r}: every request must score at "
            "least one token; drop the request or give it a continuation"
        )
    if context == "":
        return [prefix_token_id(tokenizer)], _encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":  # the context was only whitespace
        return [prefix_token_id(tokenizer)], _encode(tokenizer, continuation)
    whole = _encode(tokenizer, context + continuation)
    context_enc = _encode(tokenizer, context)
    return context_enc, whole[len(context_enc) :]


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def _model_max_length(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def score_tokens(
    model: Any,
    requests: Sequence[TokenRequest],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    pad_token_id: int = 0,
    progress: bool = True,
    description: str = "log-likelihood",
    attention_mask: bool = True,
    row_conditions: Sequence[int] | None = None,
    session: Any = None,
) -> list[LL]:
    """Score pre-tokenised (context ids, continuation ids) requests; results in input order.

    ``row_conditions`` (one condition index per request) with ``session`` (a routing session
    attached with per-row ``conditions``) scores each request under its own condition: the
    requests of C conditions share batches, and each batch sets its rows' conditions first.

    ``max_length`` is the longest input the model gets (default: the model config's
    ``max_position_embeddings``); longer inputs lose tokens from the left of the context, as in
    lm-eval. A continuation longer than ``max_length`` is an error (score it with
    :func:`rolling_loglikelihood`).

    ``attention_mask=False`` leaves the mask out, as lm-eval does for causal models: with
    right padding no real token can attend to a pad (pads come later), so scores are the
    same, and attention takes its unmasked causal fast path (~20 % faster on CPU). Keep it on
    for models whose layers read the mask beyond attention.
    """
    if batch_size < 1:
        raise RoutelabError(f"batch_size must be >= 1, got {batch_size}")
    n = len(requests)
    if n == 0:
        return []
    if row_conditions is not None and (session is None or len(row_conditions) != n):
        raise RoutelabError(
            "score_tokens: row_conditions needs one condition index per request and the routing "
            "session attached with those conditions (routing.attach(..., conditions=[...]))"
        )
    max_length = max_length or _model_max_length(model)
    _check_requests(requests, max_length)
    order = _longest_first(requests)
    device = next(model.parameters()).device
    accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    results: list[LL | None] = [None] * n

    was_training = model.training
    model.eval()  # dropout off: scores must be deterministic
    try:
        with progress_display(description, total=n, unit="requests", enabled=progress) as bar, torch.inference_mode():
            for start in range(0, n, batch_size):
                chunk = order[start : start + batch_size]
                # How this works on a causal decoder (lm-eval's diagram):
                #
                #          CTX      CONT
                # inp    0 1 2 3|4 5 6 7 8 9   <- the last token is dropped: nothing predicts after it
                # model  \               \
                # logits   1 2 3|4 5 6 7 8 9   <- logit at position t predicts token t+1; the context
                # cont_toks      4 5 6 7 8 9      half is tossed, only the last len(CONT) positions count
                #
                # seq = (ctx + cont)[-(max_length+1):]; inp = seq[:-1]; target = seq[1:].
                inp, attn, tgt, is_cont, first, contlens = _batch(requests, chunk, max_length, pad_token_id)
                T = inp.shape[1]
                if row_conditions is not None:
                    session.use_conditions([row_conditions[i] for i in chunk])
                kwargs: dict[str, Any] = {"input_ids": inp.to(device)}
                if attention_mask:
                    kwargs["attention_mask"] = attn.to(device)
                if accepts_keep:
                    kwargs["logits_to_keep"] = torch.arange(first, T, device=device)
                kwargs["use_cache"] = False
                logits = model(**kwargs).logits  # (B, T', V), T' = T - first when sliced
                if logits.shape[1] != T - first:
                    logits = logits[:, first:, :]  # (B, T - first, V)
                ll, greedy = _lls(logits, tgt[:, first:], is_cont[:, first:])  # (B,) each
                del logits
                for b, i in enumerate(chunk):
                    results[i] = LL(float(ll[b]), contlens[b], bool(greedy[b]))
                bar.advance(len(chunk))
    finally:
        model.train(was_training)

    missing = [i for i, r in enumerate(results) if r is None]
    assert not missing, f"scorer lost {len(missing)} of {n} requests, first indices {missing[:10]}"
    return results  # type: ignore[return-value]


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    return 0


def score(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    description: str = "log-likelihood",
    attention_mask: bool = True,
    row_conditions: Sequence[int] | None = None,
    session: Any = None,
) -> list[LL]:
    """Log-likelihood of each ``(context, continuation)`` request, in input order.

    See the module docstring for the tokenisation rules. ``batch_size`` trades memory for
    speed; results do not depend on it (beyond float rounding). ``attention_mask``,
    ``row_conditions`` and ``session``: see :func:`score_tokens`.
    """
    token_requests = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
    return score_tokens(
        model,
        token_requests,
        batch_size=batch_size,
        max_length=max_length,
        pad_token_id=_pad_id(tokenizer),
        progress=progress,
        description=description,
        attention_mask=attention_mask,
        row_conditions=row_conditions,
        session=session,
    )


# --------------------------------------------------------------------------------------------
# Plain texts: rolling log-likelihood and token-weighted perplexity
# --------------------------------------------------------------------------------------------


def rolling_windows(tokens: Sequence[int], prefix: int, max_length: int) -> list[TokenRequest]:
    """Disjoint windows that predict every token of ``tokens`` exactly once.

    The first window's context is ``[prefix]`` (BOS); each later window's context is the
    tokens before it, as many as fit in ``max_length`` inputs. Like lm-eval's
    ``get_rolling_token_windows(..., context_len=1)`` + ``make_disjoint_window``.
    """
    if max_length < 1:
        raise RoutelabError(f"max_length must be >= 1, got {max_length}")
    tokens = list(tokens)
    windows: list[TokenRequest] = []
    start = 0
    while start < len(tokens):
        end = min(start + max_length, len(tokens))
        cont = tokens[start:end]
        history = [prefix] + tokens[:start]
        n_ctx = max_length + 1 - len(cont)  # inputs = ctx + cont[:-1] <= max_length
        windows.append((history[-n_ctx:], cont))
        start = end
    return windows


def rolling_loglikelihood(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    description: str = "rolling log-likelihood",
    row_conditions: Sequence[int] | None = None,
    session: Any = None,
) -> list[LL]:
    """Log-likelihood of each whole text scored after BOS (one :class:`LL` per text).

    Texts longer than ``max_length`` tokens are cut into disjoint windows (every token is
    predicted once); the windows of all texts go through :func:`score_tokens` together.
    ``greedy`` is True only when every token of the text is the greedy choice.
    ``row_conditions`` (one per text) and ``session``: see :func:`score_tokens`.
    """
    max_length = max_length or _model_max_length(model) or 2048
    prefix = prefix_token_id(tokenizer)
    windows: list[TokenRequest] = []
    owner: list[int] = []
    for t, text in enumerate(texts):
        toks = _encode(tokenizer, text)
        if not toks:
            raise RoutelabError(f"text {t} tokenises to nothing ({text!r}): drop empty lines first")
        for w in rolling_windows(toks, prefix, max_length):
            windows.append(w)
            owner.append(t)
    lls = score_tokens(
        model,
        windows,
        batch_size=batch_size,
        max_length=max_length,
        pad_token_id=_pad_id(tokenizer),
        progress=progress,
        description=description,
        row_conditions=None if row_conditions is None else [row_conditions[t] for t in owner],
        session=session,
    )
    total = [0.0] * len(texts)
    count = [0] * len(texts)
    greedy = [True] * len(texts)
    for t, ll in zip(owner, lls):
        total[t] += ll.logprob
        count[t] += ll.n_tokens
        greedy[t] = greedy[t] and ll.greedy
    return [LL(total[t], count[t], greedy[t]) for t in range(len(texts))]


def perplexity(lls: Iterable[LL]) -> float:
    """Token-weighted perplexity exp(−Σ LL / Σ tokens) (docs/method.md §8, held-out text)."""
    lls = list(lls)
    n = sum(ll.n_tokens for ll in lls)
    if n == 0:
        raise RoutelabError("perplexity of zero tokens is undefined: pass at least one non-empty text")
    return math.exp(-sum(ll.logprob for ll in lls) / n)


def score_tokens_forked(
    model: Any,
    requests: Sequence[TokenRequest],
    fork: Any,
    n_conditions: int,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    pad_token_id: int = 0,
    progress: bool = True,
    description: str = "log-likelihood",
) -> list[list[LL]]:
    """Score every request under C conditions in one forward per batch, sharing the layers
    before each condition's first edited layer (``fork``: a routing.LayerFork). Returns, per
    request, its C LLs. No attention mask (right padding: pads come after every real token) and
    no position ids, so every tensor but the hidden states broadcasts over the added rows.
    """
    n = len(requests)
    if n == 0:
        return []
    max_length = max_length or _model_max_length(model)
    _check_requests(requests, max_length)
    order = _longest_first(requests)
    device = next(model.parameters()).device
    accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    results: list[list[LL] | None] = [None] * n
    with progress_display(description, total=n, unit="requests", enabled=progress) as bar, torch.inference_mode():
        for start in range(0, n, batch_size):
            chunk = order[start : start + batch_size]
            B = len(chunk)
            inp, _, tgt, is_cont, first, contlens = _batch(requests, chunk, max_length, pad_token_id)  # (B, T) each
            kwargs: dict[str, Any] = {"input_ids": inp.to(device), "use_cache": False}
            if accepts_keep:
                kwargs["logits_to_keep"] = torch.arange(first, inp.shape[1], device=device)
            with fork.batch(B):
                logits = model(**kwargs).logits  # (R·B, T', V): R blocks of B rows
            if logits.shape[1] != inp.shape[1] - first:
                logits = logits[:, first:, :]
            per_cond = []
            for c in range(n_conditions):
                ll, greedy = _lls(logits[fork.rows(c, B)], tgt[:, first:], is_cont[:, first:])  # (B,) each
                per_cond.append((ll, greedy))
            for b, i in enumerate(chunk):
                results[i] = [LL(float(ll[b]), contlens[b], bool(g[b])) for ll, g in per_cond]
            bar.advance(B)
    assert all(r is not None for r in results), "scorer lost requests"
    return results  # type: ignore[return-value]


def _check_requests(requests: Sequence[TokenRequest], max_length: int | None) -> None:
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) == 0 or len(cont) == 0:
            raise RoutelabError(
                f"token request {i} has {len(ctx)} context and {len(cont)} continuation tokens: "
                "both must be non-empty (use encode_pair, which puts BOS before an empty context)"
            )
        if max_length is not None and len(cont) > max_length:
            raise RoutelabError(
                f"token request {i}: continuation of {len(cont)} tokens exceeds max_length="
                f"{max_length}; score long texts with rolling_loglikelihood"
            )


def _longest_first(requests: Sequence[TokenRequest]) -> list[int]:
    """Request indices, longest first; ties broken by the tokens themselves (deterministic order)."""
    return sorted(range(len(requests)), key=lambda i: (-(len(requests[i][0]) + len(requests[i][1])), requests[i]))


def _batch(requests, chunk, max_length, pad_token_id):
    """(inp, attn, tgt, is_cont, first scored position, continuation lengths) of one right-padded batch."""
    seqs, inplens, contlens = [], [], []
    for i in chunk:
        ctx, cont = requests[i]
        seq = list(ctx) + list(cont)
        if max_length is not None:
            seq = seq[-(max_length + 1) :]
        seqs.append(seq)
        inplens.append(len(seq) - 1)
        contlens.append(len(cont))
    B, T = len(chunk), max(inplens)
    inp = torch.full((B, T), pad_token_id, dtype=torch.long)  # (B, T) right-padded
    attn = torch.zeros((B, T), dtype=torch.long)  # (B, T) 1 = real token
    tgt = torch.zeros((B, T), dtype=torch.long)  # (B, T) next-token targets
    is_cont = torch.zeros((B, T), dtype=torch.bool)  # (B, T) 1 = scored position
    for b, (seq, L, c) in enumerate(zip(seqs, inplens, contlens)):
        inp[b, :L] = torch.tensor(seq[:-1])
        attn[b, :L] = 1
        tgt[b, :L] = torch.tensor(seq[1:])
        is_cont[b, L - c : L] = True
    # Only positions from the earliest continuation start onward need logits (saves the
    # (B, T, V) head on long contexts).
    first = min(L - c for L, c in zip(inplens, contlens))
    return inp, attn, tgt, is_cont, first, contlens


def _lls(logits: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log p(target) over masked positions and the all-greedy flag; logits (B, T', V).
    log_softmax gathered at the targets without a second (B, T', V) tensor: log p(x) = z_x − logsumexp(z)."""
    logits = logits.float()  # log-probs in at least float32
    tgt, mask = tgt.to(logits.device), mask.to(logits.device)
    lse = torch.logsumexp(logits, dim=-1)  # (B, T')
    z = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T')
    ll = torch.where(mask, z - lse, torch.zeros_like(lse)).sum(dim=-1)  # (B,)
    greedy = ((logits.argmax(dim=-1) == tgt) | ~mask).all(dim=-1)  # (B,)
    return ll, greedy
