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

Memory is bounded by a setting, not by vocabulary × context (``max_logits_bytes``, default
256 MiB on every device; params ``bench_baseline.max_logits_bytes``, ``routelab bench
--max-logits-bytes``). The engine runs the model's decoder (``model.get_decoder()``: hidden
states (B, T, H)) and applies the model's own output head (``model.get_output_embeddings()``,
bias included) itself:

* when the logits of a batch from its earliest scored position fit in the budget, the head
  runs on that (B, T', H) block at once, the tensor the model's own forward with
  ``logits_to_keep`` gives it, so scores are bit-identical to a plain forward's (a matmul's last
  bits depend on its shape: the testbeds' committed outputs stay byte for byte);
* otherwise only each row's continuation positions are kept, flattened to (N, H), and the head,
  the log-sum-exp, the target's logit and the argmax run on chunks of N that fit in the budget.

Every supported family's CausalLM forward is ``lm_head(last_hidden_state)`` with no scaling or
softcapping (OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, GPT-OSS, Phi-3.5-MoE with its
head bias; DeepSeekMoE's remote code adds ``.float()``), so both paths score what the model's
forward computes; a config that asks for a logit transform is refused. Families whose forward
ignores ``logits_to_keep`` gain the same bound, since routelab applies the head.

Routing edits are hooks on router modules and decoder layers inside the decoder, so the scores
always reflect the edit that is active *now*. Nothing is cached across calls.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch

from routelab.errors import RoutelabError
from routelab.progress import progress as progress_display

Request = tuple[str, str]  # (context, continuation)
TokenRequest = tuple[list[int], list[int]]  # (context token ids, continuation token ids)


# The default of max_logits_bytes: 256 MiB of logits per chunk, on every device. A fixed number,
# not one derived from free memory: chunk boundaries change a matmul's last bits, and scores must
# not depend on what else the machine runs. On a GPU raise it (e.g. 2 GiB) for fewer, larger chunks.
DEFAULT_MAX_LOGITS_BYTES = 256 * 2**20
# Bytes per scored position and vocabulary entry at the peak of a chunk: its float32 logits and
# logsumexp's temporary of the same size (exp(z − max)); a bf16 head output (2 B) is freed before.
LOGIT_BYTES = 8
# Config keys that mean a CausalLM forward transforms the head's output (Gemma-2, Cohere, Granite):
# routelab applies the head itself and does not re-implement them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class LL:
    """Log-likelihood of one continuation given its context."""

    logprob: float  # Σ log p(continuation token | prefix), natural log
    n_tokens: int  # number of continuation tokens scored
    greedy: bool  # True when every continuation token is the argmax of its distribution
    token_logprobs: tuple[float, ...] | None = None  # log p of each continuation token, in order (token_level)
    tokens: tuple[int, ...] | None = None  # the continuation token ids scored (token_level)

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


def check_max_logits_bytes(value: Any, setting: str = "max_logits_bytes") -> int:
    """``value`` as a whole number of bytes > 0, or a RoutelabError naming ``setting``.

    Usage: ``budget = check_max_logits_bytes(cfg.max_logits_bytes, "bench_baseline.max_logits_bytes")``.
    A string of digits (a command-line flag) is accepted; anything else is refused.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RoutelabError(
            f"{setting} {value}: must be a whole number of bytes > 0, the most memory the scorer's logits "
            f"may take at once (default {DEFAULT_MAX_LOGITS_BYTES} = 256 MiB)"
        )
    return value


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder (input ids → hidden states (B, T, H)) and the output head (H → V) of a causal LM.

    Usage: ``body, head = decoder_and_head(model); logits = head(body(input_ids=ids).last_hidden_state)``.
    """
    get_body, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    body = get_body() if callable(get_body) else None
    head = get_head() if callable(get_head) else None
    if body is None or body is model or head is None:
        raise RoutelabError(
            f"{type(model).__name__}: routelab scores with the model's decoder (get_decoder()) and output head "
            "(get_output_embeddings()), and this model exposes no such pair: load it as a transformers causal "
            "LM (AutoModelForCausalLM)"
        )
    config = getattr(model, "config", None)
    transforms = [k for k in _LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 0, 1, 1.0)]
    if transforms:
        raise RoutelabError(
            f"{type(model).__name__}: its config sets {', '.join(transforms)}: its forward transforms the "
            "head's logits, which routelab's scorer does not re-implement; this family is not supported"
        )
    return body, head


def _vocab_size(head: Any) -> int | None:
    """Rows of the output head's weight (the logits' last dimension); None for a head without one."""
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def _logits_budget(head: Any, max_logits_bytes: Any) -> int:
    """The checked budget; refused when one scored position's logits alone exceed it."""
    budget = check_max_logits_bytes(max_logits_bytes)
    V = _vocab_size(head)
    if V is not None and budget < LOGIT_BYTES * V:
        raise RoutelabError(
            f"max_logits_bytes {budget} is below one scored position's logits ({V} vocabulary entries × "
            f"{LOGIT_BYTES} B): raise bench_baseline.max_logits_bytes (routelab bench: --max-logits-bytes) to at "
            f"least {LOGIT_BYTES * V} (default {DEFAULT_MAX_LOGITS_BYTES})"
        )
    return budget


def _hidden_states(body: Any, inp: torch.Tensor, attn: torch.Tensor | None, device: Any) -> torch.Tensor:
    """The decoder's last hidden states (B, T, H) of one batch (routing hooks fire inside)."""
    kwargs: dict[str, Any] = {"input_ids": inp.to(device), "use_cache": False}
    if attn is not None:
        kwargs["attention_mask"] = attn.to(device)
    return body(**kwargs).last_hidden_state  # (B, T, H)


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
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    token_level: bool = False,
) -> list[LL]:
    """Score pre-tokenised (context ids, continuation ids) requests; results in input order.

    Usage: ``lls = score_tokens(model, [([bos], [17, 42])], max_logits_bytes=2**28, token_level=True)``.

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

    ``max_logits_bytes`` caps the logits held at once (module docstring); ``token_level`` adds
    each continuation token's log p and id to every :class:`LL`.
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
    body, head = decoder_and_head(model)
    budget = _logits_budget(head, max_logits_bytes)
    max_length = max_length or _model_max_length(model)
    _check_requests(requests, max_length)
    order = _longest_first(requests)
    device = next(model.parameters()).device
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
                # The head runs only from the batch's first scored position (or, past the budget,
                # only on each row's CONT positions, in chunks): see _position_scores.
                inp, attn, tgt, is_cont, first, _ = _batch(requests, chunk, max_length, pad_token_id)  # (B, T) each
                if row_conditions is not None:
                    session.use_conditions([row_conditions[i] for i in chunk])
                hidden = _hidden_states(body, inp, attn if attention_mask else None, device)  # (B, T, H)
                lls = _row_lls(head, hidden, tgt, is_cont, first, budget, token_level)
                del hidden
                for b, i in enumerate(chunk):
                    results[i] = lls[b]
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
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    token_level: bool = False,
) -> list[LL]:
    """Log-likelihood of each ``(context, continuation)`` request, in input order.

    See the module docstring for the tokenisation rules. ``batch_size`` trades memory for
    speed; results do not depend on it (beyond float rounding). ``attention_mask``,
    ``row_conditions``, ``session``, ``max_logits_bytes`` and ``token_level``: see
    :func:`score_tokens`.
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
        max_logits_bytes=max_logits_bytes,
        token_level=token_level,
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
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    token_level: bool = False,
) -> list[LL]:
    """Log-likelihood of each whole text scored after BOS (one :class:`LL` per text).

    Usage: ``lls = rolling_loglikelihood(model, tokenizer, ["One passage.", "Another."])``.

    Texts longer than ``max_length`` tokens are cut into disjoint windows (every token is
    predicted once); the windows of all texts go through :func:`score_tokens` together, and a
    window scores only its own tokens (its context, the text before it, is only read).
    ``greedy`` is True only when every token of the text is the greedy choice. With
    ``token_level`` the windows' tokens and log-probabilities are joined in text order.
    ``row_conditions`` (one per text), ``session`` and ``max_logits_bytes``: see :func:`score_tokens`.
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
        max_logits_bytes=max_logits_bytes,
        token_level=token_level,
    )
    total = [0.0] * len(texts)
    count = [0] * len(texts)
    greedy = [True] * len(texts)
    per_text: list[list[LL]] = [[] for _ in texts]
    for t, ll in zip(owner, lls):
        total[t] += ll.logprob
        count[t] += ll.n_tokens
        greedy[t] = greedy[t] and ll.greedy
        per_text[t].append(ll)
    return [LL(total[t], count[t], greedy[t], *joined_tokens(per_text[t])) for t in range(len(texts))]


def joined_tokens(windows: Sequence[LL]) -> tuple[tuple[float, ...] | None, tuple[int, ...] | None]:
    """(token_logprobs, tokens) of a text scored in disjoint windows (given in text order): the
    windows' own joined, or (None, None) when they were scored without ``token_level``."""
    if not windows or any(w.tokens is None or w.token_logprobs is None for w in windows):
        return None, None
    return tuple(x for w in windows for x in w.token_logprobs), tuple(x for w in windows for x in w.tokens)


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
    max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
    token_level: bool = False,
) -> list[list[LL]]:
    """Score every request under C conditions in one forward per batch, sharing the layers
    before each condition's first edited layer (``fork``: a routing.LayerFork). Returns, per
    request, its C LLs. No attention mask (right padding: pads come after every real token) and
    no position ids, so every tensor but the hidden states broadcasts over the added rows.

    Usage: ``lls = score_tokens_forked(model, reqs, LayerFork(model, session, firsts), C)``;
    ``max_logits_bytes`` and ``token_level``: see :func:`score_tokens`.
    """
    n = len(requests)
    if n == 0:
        return []
    body, head = decoder_and_head(model)
    budget = _logits_budget(head, max_logits_bytes)
    max_length = max_length or _model_max_length(model)
    _check_requests(requests, max_length)
    order = _longest_first(requests)
    device = next(model.parameters()).device
    results: list[list[LL] | None] = [None] * n
    with progress_display(description, total=n, unit="requests", enabled=progress) as bar, torch.inference_mode():
        for start in range(0, n, batch_size):
            chunk = order[start : start + batch_size]
            B = len(chunk)
            inp, _, tgt, is_cont, first, _ = _batch(requests, chunk, max_length, pad_token_id)  # (B, T) each
            with fork.batch(B):
                hidden = _hidden_states(body, inp, None, device)  # (R·B, T, H): R blocks of B rows
            R = hidden.shape[0] // B
            # every block scores the same requests: targets and scored positions repeat per block
            lls = _row_lls(head, hidden, tgt.repeat(R, 1), is_cont.repeat(R, 1), first, budget, token_level)
            del hidden
            per_cond = [lls[fork.rows(c, B)] for c in range(n_conditions)]  # C lists of B LLs
            for b, i in enumerate(chunk):
                results[i] = [rows[b] for rows in per_cond]
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


def _head_scores(head: Any, hidden: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether the target is the argmax, at each position of ``hidden`` (..., H).
    log_softmax gathered at the targets without a second (..., V) tensor: log p(x) = z_x − logsumexp(z)."""
    logits = head(hidden).float()  # (..., V) log-probs in at least float32
    lse = torch.logsumexp(logits, dim=-1)  # (...)
    z = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (...)
    return z - lse, logits.argmax(dim=-1) == tgt


def _position_scores(
    head: Any, hidden: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) (R, T') float32 and argmax == target (R, T') bool of the hidden states (R, T', H)
    from the batch's first scored position; exact at the scored positions (``mask``), 0 / True or
    unscored values elsewhere. Holds at most ``budget`` bytes of logits at once."""
    R, T, _ = hidden.shape
    V = _vocab_size(head)
    per_position = LOGIT_BYTES * (V or 1)
    if V is None or R * T * per_position <= budget:
        # One chunk: the head on (R, T', H), the tensor the model's forward with logits_to_keep
        # gives it (contiguous), so every bit is what a plain forward computes.
        return _head_scores(head, hidden.contiguous(), tgt)  # (R, T') each
    # Past the budget: only each row's own continuation positions (not every position from the
    # batch's first), flattened, in chunks of rows that fit.
    h, t = hidden[mask], tgt[mask]  # (N, H), (N,) row-major over the scored positions
    rows = budget // per_position
    parts = [_head_scores(head, h[s : s + rows], t[s : s + rows]) for s in range(0, len(t), rows)]  # (n,) each
    lp = torch.zeros((R, T), dtype=torch.float32, device=hidden.device)  # (R, T')
    hit = torch.ones((R, T), dtype=torch.bool, device=hidden.device)  # (R, T')
    lp[mask] = torch.cat([p for p, _ in parts])
    hit[mask] = torch.cat([g for _, g in parts])
    return lp, hit


def _row_lls(
    head: Any, hidden: torch.Tensor, tgt: torch.Tensor, is_cont: torch.Tensor, first: int, budget: int,
    token_level: bool,
) -> list[LL]:
    """One LL per row of the decoder's hidden states (R, T, H), targets and scored positions (R, T)."""
    tgt, mask = tgt[:, first:].to(hidden.device), is_cont[:, first:].to(hidden.device)  # (R, T') each
    lp, hit = _position_scores(head, hidden[:, first:], tgt, mask, budget)  # (R, T') each
    ll = torch.where(mask, lp, torch.zeros_like(lp)).sum(dim=-1)  # (R,)
    greedy = (hit | ~mask).all(dim=-1)  # (R,)
    n_tokens = mask.sum(dim=-1)  # (R,)
    rows = zip(ll.tolist(), n_tokens.tolist(), greedy.tolist())
    if not token_level:
        return [LL(x, int(k), bool(g)) for x, k, g in rows]
    lp, tgt, mask = lp.cpu(), tgt.cpu(), mask.cpu()
    return [
        LL(x, int(k), bool(g), tuple(lp[r][mask[r]].tolist()), tuple(tgt[r][mask[r]].tolist()))  # in token order
        for r, (x, k, g) in enumerate(rows)
    ]
