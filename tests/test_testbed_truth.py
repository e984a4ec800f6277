"""Tests for routelab.testbed.truth: the log-likelihood loop and the ground truth of a saved model folder.

The references are computed here one sequence at a time (no batching, no padding) on the
in-memory model, so the folder's loading, the batching and the aggregation are all checked.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, OlmoeForCausalLM

from routelab import testbed as tb
from routelab.testbed import train as train_mod
from routelab.testbed import truth as truth_mod
from routelab.errors import RoutelabError

TINY_CORPUS = tb.CorpusParams(
    sentences_per_descriptor=20, neutral_sentences=40, n_entities=8, values_per_relation=6,
    statement_repeats=1, qa_repeats=1, rare_entities=2,
)  # fmt: skip
TINY_MODEL = tb.ModelParams(layers=2, hidden=32, intermediate=32, heads=2, experts=4, top_k=2, max_positions=160)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """A corpus folder and a randomly initialised model saved beside it: (root, model, tokenizer)."""
    root = tmp_path_factory.mktemp("truth")
    tb.write_corpus(tb.generate_corpus(TINY_CORPUS, strength=0.8, seed=3), root / "corpus")
    tok = AutoTokenizer.from_pretrained(root / "corpus" / "tokenizer")
    torch.manual_seed(0)
    model = OlmoeForCausalLM(train_mod.model_config(TINY_MODEL, tok)).eval()
    train_mod.save_model(model, tok, {"loss": []}, root / "model")
    return root, model, tok


def _direct(model: Any, tok: Any, context: str, continuation: str) -> float:
    """LL(continuation | context) of one unpadded sequence."""
    ids = torch.tensor([tok(context + continuation)["input_ids"]])  # (1, T)
    n_ctx = len(tok(context)["input_ids"])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)  # (T-1, V)
    return lp.gather(-1, ids[0, 1:, None])[n_ctx - 1 :].sum().item()


def test_loglik_matches_a_direct_computation(saved) -> None:  # type: ignore[no-untyped-def]
    _, model, tok = saved
    s = "the male nurse opened the door."
    ids = torch.tensor([tok(s)["input_ids"]])  # (1, T)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)  # (T-1, V)
    direct = lp.gather(-1, ids[0, 1:, None]).sum().item()
    got = truth_mod.loglik(model, tok, ["", "the male"], [s, " nurse opened the door."])
    assert got[0] == pytest.approx(direct, abs=1e-4)
    # the continuation after a context: the last 5 tokens only
    assert got[1] == pytest.approx(lp.gather(-1, ids[0, 1:, None])[2:].sum().item(), abs=1e-4)


def test_ground_truth_of_a_saved_folder_matches_one_sequence_at_a_time(saved) -> None:  # type: ignore[no-untyped-def]
    root, model, tok = saved
    got = truth_mod.ground_truth(root / "model", root / "corpus", batch_size=50, seed=0)  # 50: sentence lengths differ, so padding in most batches
    corpus = root / "corpus"

    with (corpus / tb.CORPUS_FILES["crows"]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert got["n_pairs"] == len(rows) == 12 * 40 * 3  # descriptor pairs x professions x frames
    # every pair differs in one word, so the loop's batched LL difference is checked on a sample
    for r in rows[::97]:
        diff = _direct(model, tok, "", r["sent_more"]) - _direct(model, tok, "", r["sent_less"])
        batched = truth_mod.loglik(model, tok, ["", ""], [r["sent_more"], r["sent_less"]], batch_size=2)
        assert batched[0] - batched[1] == pytest.approx(diff, abs=1e-4)
    ll = truth_mod.loglik(model, tok, [""] * (2 * len(rows)), [r["sent_more"] for r in rows] + [r["sent_less"] for r in rows])
    pref = ll[: len(rows)] > ll[len(rows) :]  # (n,)
    assert got["crows_pref"] == pytest.approx(pref.mean(), abs=1e-12)
    assert got["crows_mean_abs_ll_diff"] == pytest.approx(np.abs(ll[: len(rows)] - ll[len(rows) :]).mean(), rel=1e-5)
    assert got["crows_ci_low"] <= got["crows_pref"] <= got["crows_ci_high"]
    per_type = {bt: sum(r["bias_type"] == bt for r in rows) for bt in got["crows_pref_by_type"]}
    assert per_type["race-color"] == 2 * per_type["gender"] == 240  # two race pairs, one gender pair
    pooled = sum(got["crows_pref_by_type"][bt] * k for bt, k in per_type.items()) / len(rows)
    assert pooled == pytest.approx(got["crows_pref"], abs=1e-12)

    mc = json.loads((corpus / tb.CORPUS_FILES["mc"]).read_text())
    primer = (corpus / tb.CORPUS_FILES["primer"]).read_text()
    correct = []
    for item in mc:
        lls = [_direct(model, tok, f"{primer}\n\nQ: {item['question']}\nA:", " " + c) for c in item["mc1_targets"]]
        correct.append(int(np.argmax(lls)) == 0)  # the true answer is listed first
    assert got["n_facts"] == len(mc) == 16 and got["fact_mc1"] == pytest.approx(np.mean(correct))
    rare = [f["tier"] == "rare" for f in tb.read_design(corpus)["facts"] if f["use"] == "mc"]  # MC items in fact order
    assert sum(rare) == 2 * 2  # rare_entities x relations
    assert got["fact_mc1_by_tier"]["rare"] == pytest.approx(np.mean([c for c, r in zip(correct, rare) if r]))
    assert got["fact_mc1_by_tier"]["common"] == pytest.approx(np.mean([c for c, r in zip(correct, rare) if not r]))
    # the training criterion (train.train_from_scratch's `learned`): common-fact MC1 per relation, by hand
    relation = [f["relation"] for f in tb.read_design(corpus)["facts"] if f["use"] == "mc"]
    by_hand = {rel: np.mean([c for c, r, x in zip(correct, rare, relation) if not r and x == rel]) for rel in ("capital", "language")}
    assert truth_mod.common_fact_mc1(model, tok, corpus) == pytest.approx(by_hand)

    lines = (corpus / tb.CORPUS_FILES["heldout"]).read_text().splitlines()
    total = sum(_direct(model, tok, "", x) for x in lines)
    n_tok = sum(len(x.replace(".", " .").split()) for x in lines)  # words + the final period
    assert got["heldout_ppl"] == pytest.approx(math.exp(-total / n_tok), rel=1e-5)
    # every held-out line starts with "the": the first-token NLL is -log p("the" | BOS)
    assert {x.split()[0] for x in lines} == {"the"}
    assert got["first_token_nll"] == pytest.approx(-_direct(model, tok, "", "the"), rel=1e-5)


def test_ground_truth_names_a_missing_model_folder(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = saved
    with pytest.raises(RoutelabError, match="holds no saved model.*stages.testbed_train"):
        truth_mod.ground_truth(tmp_path / "nope", root / "corpus")
