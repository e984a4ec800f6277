"""The testbed's own ground truth of any saved model folder: CrowS-style preference, fact MC1, perplexity, first-token NLL.

Independent of routelab.scoring on purpose: each checks the other, so a scorer bug cannot hide in the ground truth.
(It loads the folder and sums log-probabilities itself; it shares no code with routelab.scoring or routelab.models.)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from routelab.errors import RoutelabError
from routelab.testbed.corpus import CORPUS_FILES, require_corpus_dir, words


def loglik(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 64,
) -> np.ndarray:
    """LL(continuation | context) = sum of log p over the continuation's tokens, one per request.

    An empty context is just BOS (the tokenizer prepends it), so a sentence's LL is the sum
    over all its words. Batches are right-padded; the causal mask keeps pads out of real
    positions.
    """
    reqs = []
    for ctx, cont in zip(contexts, continuations):
        c = tokenizer(ctx)["input_ids"]
        full = tokenizer(ctx + cont)["input_ids"]
        assert full[: len(c)] == c and len(full) > len(c), (ctx, cont, c, full)
        reqs.append((full, len(c)))
    out = np.zeros(len(reqs))
    with torch.no_grad():
        for s in range(0, len(reqs), batch_size):
            chunk = reqs[s : s + batch_size]
            T = max(len(f) for f, _ in chunk)
            ids = torch.full((len(chunk), T), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)  # (B, T)
            for i, (f, _) in enumerate(chunk):
                ids[i, : len(f)] = torch.tensor(f)
                mask[i, : len(f)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): predicts ids[:, 1:]
            tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
            for i, (f, n_ctx) in enumerate(chunk):
                # token j (j >= n_ctx) is predicted at row j - 1
                out[s + i] = float(tok_lp[i, n_ctx - 1 : len(f) - 1].sum())
    return out


def fact_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_dir: Path, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """The fact task item by item: ``correct`` (n_mc,) 1.0 where the true answer has the highest LL
    after the QA primer (MC1), with each item's ``tier`` ("common" | "rare") and ``relation``."""
    mc = json.loads((corpus_dir / CORPUS_FILES["mc"]).read_text())
    primer = (corpus_dir / CORPUS_FILES["primer"]).read_text()
    ctxs, conts, owner = [], [], []
    for i, item in enumerate(mc):
        for choice in item["mc1_targets"]:
            ctxs.append(f"{primer}\n\nQ: {item['question']}\nA:")
            conts.append(" " + choice)
            owner.append(i)
    mll = loglik(model, tokenizer, ctxs, conts, batch_size)  # (n_choices,)
    owner_a = np.array(owner)
    correct = []
    for i, item in enumerate(mc):
        labels = list(item["mc1_targets"].values())  # 1 for the true answer
        correct.append(labels[int(np.argmax(mll[owner_a == i]))] == 1)
    facts = {f["question"]: f for f in json.loads((corpus_dir / CORPUS_FILES["design"]).read_text())["facts"]}
    return {
        "correct": np.array(correct, dtype=float),
        "tier": np.array([facts[item["question"]].get("tier", "common") for item in mc]),  # corpora before the tiers: all common
        "relation": np.array([facts[item["question"]].get("relation", "") for item in mc]),
    }


def common_fact_mc1(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_dir: str | Path, batch_size: int = 64
) -> dict[str, float]:
    """MC1 of the common facts per relation: whether training has taught each relation (1.0 once learned)."""
    f = fact_answers(model, tokenizer, require_corpus_dir(corpus_dir), batch_size)
    common = f["tier"] == "common"
    return {str(r): float(f["correct"][common & (f["relation"] == r)].mean()) for r in sorted(set(f["relation"][common]))}


def crows_rows(corpus_dir: str | Path) -> list[dict[str, str]]:
    """The corpus's CrowS-style pairs (csv rows: sent_more, sent_less, bias_type, cluster, ...)."""
    with (require_corpus_dir(corpus_dir) / CORPUS_FILES["crows"]).open(newline="") as fh:
        return list(csv.DictReader(fh))


def crows_loglik(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, str]],
                 batch_size: int = 64) -> np.ndarray:
    """LL of every pair's sent_more, then every pair's sent_less: (2n,)."""
    sents = [r["sent_more"] for r in rows] + [r["sent_less"] for r in rows]
    return loglik(model, tokenizer, [""] * len(sents), sents, batch_size)


def ground_truth(
    model_dir: str | Path, corpus_dir: str | Path, *, batch_size: int = 64, seed: int = 0,
    crows_ll: np.ndarray | None = None,
) -> dict[str, Any]:
    """CrowS-style preference (+ bootstrap 95% CI), fact MC1 accuracy (also per fact tier), held-out perplexity, first-token NLL.

    ``model_dir``: a saved model folder with its tokenizer (what ``train.save_model`` writes),
    loaded in float32; ``corpus_dir``: the corpus folder whose benchmark sets are scored.
    ``seed`` seeds the bootstrap. ``crows_ll``: the CrowS log-likelihoods of this model
    (:func:`crows_loglik`) when a caller has them already (the route swap scores them).
    """
    d = require_corpus_dir(corpus_dir)
    if not (Path(model_dir) / "config.json").is_file():
        raise RoutelabError(
            f"{model_dir} holds no saved model (config.json): train it first with the stage that "
            f"writes it in dvc.yaml (`python -m stages.testbed_train` or `python -m stages.testbed_plant`)"
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    rows = crows_rows(d)
    ll = crows_loglik(model, tokenizer, rows, batch_size) if crows_ll is None else np.asarray(crows_ll)  # (2n,)
    n = len(rows)
    if ll.shape != (2 * n,):
        raise RoutelabError(f"ground_truth: crows_ll has shape {ll.shape}, the corpus has {n} pairs (need {2 * n} values)")
    pref = (ll[:n] > ll[n:]).astype(float)  # (n,) 1[LL(sent_more) > LL(sent_less)]
    ci = stats.bootstrap(
        (pref,), np.mean, n_resamples=1000, confidence_level=0.95, method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    by_type = {}
    for bt in dict.fromkeys(r["bias_type"] for r in rows):
        m = np.array([r["bias_type"] == bt for r in rows])
        by_type[bt] = float(pref[m].mean())

    facts = fact_answers(model, tokenizer, d, batch_size)
    correct_a, tiers = facts["correct"], facts["tier"]

    lines = [x for x in (d / CORPUS_FILES["heldout"]).read_text().splitlines() if x]
    hll = loglik(model, tokenizer, [""] * len(lines), lines, batch_size)  # (n_lines,)
    n_tok = sum(len(words(x)) for x in lines)
    # the first word after BOS alone: packed training rarely puts BOS at position 0, so a
    # recipe can damage exactly this prediction while the rest of the perplexity holds
    first = loglik(model, tokenizer, [""] * len(lines), [words(x)[0] for x in lines], batch_size)  # (n_lines,)
    return {
        "crows_pref": float(pref.mean()),
        "crows_ci_low": float(ci.low),
        "crows_ci_high": float(ci.high),
        "crows_pref_by_type": by_type,
        "crows_mean_abs_ll_diff": float(np.abs(ll[:n] - ll[n:]).mean()),
        "n_pairs": n,
        "fact_mc1": float(correct_a.mean()),
        "fact_mc1_by_tier": {t: float(correct_a[tiers == t].mean()) for t in ("common", "rare") if (tiers == t).any()},
        "n_facts": len(correct_a),
        "heldout_ppl": float(math.exp(-hll.sum() / n_tok)),  # token-weighted
        "first_token_nll": float(-first.mean()),  # mean NLL of the first word after BOS, held-out lines
    }
