"""routelab.interventions.score_conditions passes the scorer's settings through: the logits budget
(Suite.max_logits_bytes, from bench_baseline.max_logits_bytes) and token-level LLs (Benchmark.token_level).

Run: .venv/bin/pytest tests/test_interventions.py
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny_models as tm
from routelab.benchmarks import get_benchmark
from routelab.conditions import Condition
from routelab.interventions import Suite, score_conditions
from routelab.models import ModelSpec, load_model
from routelab.routing import RoutingEdit
from routelab.scoring import LOGIT_BYTES

TEXTS = ["the doctor is kind .", "a young nurse and the old teacher was kind , and the male engineer is old .",
         "the female doctor"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_model(ModelSpec(path=str(tm.save_tiny_olmoe(tmp_path_factory.mktemp("iv") / "m")), dtype="float32",
                                device="cpu"))


def _per_token(item, lls):
    (ll,) = lls
    return {"id": item["id"], "ll": ll.logprob, "n": ll.n_tokens, "tokens": list(ll.tokens),
            "token_sum": sum(ll.token_logprobs)}


@pytest.mark.parametrize("fork", [True, False])
def test_score_conditions_passes_the_budget_and_token_level(lm, fork):
    bench = dataclasses.replace(get_benchmark("perplexity"), token_level=True, per_item=_per_token)
    items = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)]
    V = lm.model.get_output_embeddings().weight.shape[0]
    conditions = [Condition("base", "none"), Condition("mask", "mask", edit=RoutingEdit.mask({1: [0, 1, 2]}))]
    rows = {}
    for budget in (2 * LOGIT_BYTES * V, 256 * 2**20):  # chunks of 2 positions, then one chunk per batch
        suite = Suite("test", {"perplexity": (bench, items)}, {}, max_length=8, max_logits_bytes=budget)
        seen = []  # rows of each head call
        head = lm.model.get_output_embeddings()
        hook = head.register_forward_hook(lambda m, a, out: seen.append(out.shape[:-1].numel()))
        try:
            rows[budget] = score_conditions(lm, conditions, suite, progress=False, fork=fork)
        finally:
            hook.remove()
        if budget < 2**20:
            assert max(seen) <= 2, "the budget reaches the scorer"
    for by_bench in rows.values():
        for table in (by_bench[c.name]["perplexity"] for c in conditions):
            for r, text in zip(table.iter_rows(named=True), TEXTS):
                assert r["tokens"] == lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # windows joined
                assert r["n"] == len(r["tokens"]) and r["token_sum"] == pytest.approx(r["ll"], abs=1e-5)
    small, large = rows.values()
    for c in conditions:
        assert small[c.name]["perplexity"]["ll"].to_list() == pytest.approx(large[c.name]["perplexity"]["ll"].to_list(),
                                                                             abs=1e-5)
    assert small["base"]["perplexity"]["ll"].to_list() != small["mask"]["perplexity"]["ll"].to_list()
