"""routelab.benchmarks (registry) and .engine: sources, options, and run_benchmark end to end on
a tiny random OLMoE; every number of a run is recomputed from its rows table alone.

Run: .venv/bin/pytest tests/test_benchmarks_engine.py
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import transformers

import routelab.benchmarks as B
from routelab.benchmarks import get_benchmark, load_items, metrics_from_rows, resolve_source, run_benchmark
from routelab.config import load_params, section
from routelab.errors import RoutelabError
from routelab.bench_baseline import BenchBaselineParams
from routelab.scoring import score
from test_benchmarks_base import FIXTURES, ROOT, SHARED, assert_hint_names_real_options, needs_shared

RUN_FIELDS = ("ci95", "bootstrap", "seed", "benchmark", "n_items", "source")


# --------------------------------------------------------------------------------------------
# Registry and entries
# --------------------------------------------------------------------------------------------


def test_unknown_benchmark_suggests_a_real_name():
    with pytest.raises(RoutelabError) as err:
        get_benchmark("crows_pair")
    msg = str(err.value)
    assert "Did you mean 'crows_pairs'?" in msg and "Available:" in msg
    assert msg.split("Did you mean '")[1].split("'")[0] in B.BENCHMARKS


@pytest.mark.parametrize("name", list(B.BENCHMARKS))
def test_entry_is_consistent(name):
    """Every name an entry uses exists: registry key, table docstring, headline, breakdown CIs."""
    bench = B.BENCHMARKS[name]
    assert bench.name == name and f"| {name} " in B.__doc__
    assert bench.output in ("loglikelihood", "rolling", "generation")
    # always somewhere to load from: a local default, the Hub, built in, or the model's own file (testbed)
    assert bench.default_path is not None or bench.hub is not None or bench.builtin or bench.model_owned
    if bench.scored or bench.output == "generation":
        assert set(bench.headline) <= set(bench.metrics) and bench.summary in bench.metrics
        stack = list(bench.breakdowns)
        while stack:
            b = stack.pop()
            assert set(b.ci) <= set(bench.metrics)
            stack.extend(b.inner)


def test_source_order_path_then_hub_flag_then_default_then_hub():
    crows, ss = get_benchmark("crows_pairs"), get_benchmark("stereoset")
    assert str(resolve_source(crows, "x.csv")) == "x.csv"
    assert resolve_source(crows) == crows.default_path
    assert resolve_source(crows, hub=True) == crows.hub
    assert resolve_source(ss) == ss.hub  # no local default: the Hub
    assert str(resolve_source(ss, "dev.json", hub=True)) == "dev.json"  # a given file always wins


def test_unknown_option_and_misplaced_primer_are_errors():
    with pytest.raises(RoutelabError, match=r"bench_baseline\.options\.bbq: unknown option\(s\) category; bbq takes: categories") as err:
        load_items(get_benchmark("bbq"), category=["Age"])
    assert_hint_names_real_options(str(err.value))
    with pytest.raises(RoutelabError, match="crows_pairs takes no few-shot primer: drop --primer") as err:
        load_items(get_benchmark("crows_pairs"), primer_path="p.txt")
    assert_hint_names_real_options(str(err.value))


# --------------------------------------------------------------------------------------------
# run_benchmark end to end on a tiny random OLMoE
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = transformers.OlmoeConfig(
        vocab_size=384, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
        bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )
    return transformers.OlmoeForCausalLM(cfg).eval(), transformers.ByT5Tokenizer()


def _same_from_rows(bench, metrics, rows):
    assert metrics_from_rows(bench, rows) == {k: v for k, v in metrics.items() if k not in RUN_FIELDS}


@needs_shared
def test_run_crows_pairs_on_a_split(lm):
    model, tok = lm
    crows = get_benchmark("crows_pairs")
    csv = SHARED / "crows_pairs/crows_pairs_anonymized.csv"
    items = load_items(crows, csv)
    ids = ["3", "0", "11", "7", "5"]
    metrics, frame = run_benchmark(model, tok, crows, data_path=csv, split_ids=ids, batch_size=4, seed=3,
                                   n_bootstrap=200, progress=False)
    assert frame.height == 5 and sorted(frame["id"].to_list()) == sorted(ids)
    chosen = B.select_items(items, ids)
    direct = score(model, tok, [r for it in chosen for r in crows.requests(it)], progress=False)
    assert frame["ll_more"].to_list() == pytest.approx([x.logprob for x in direct[0::2]], abs=1e-5)
    assert frame["ll_less"].to_list() == pytest.approx([x.logprob for x in direct[1::2]], abs=1e-5)
    assert metrics["pct_stereotype"] == pytest.approx(frame["stereo_pref"].mean())
    lo, hi = metrics["ci95"]["pct_stereotype"]
    assert lo <= metrics["pct_stereotype"] <= hi
    assert metrics["seed"] == 3 and metrics["bootstrap"]["n_resamples"] == 200 and metrics["n_items"] == 5
    assert metrics["source"] == str(csv)
    assert set(metrics["ci95"]) == {"pct_stereotype", "likelihood_diff", "pct_stereotype_after", "length_matched.pct_stereotype"}
    _same_from_rows(crows, metrics, frame)
    json.dumps(metrics)
    with pytest.raises(RoutelabError, match="not in the benchmark data"):
        run_benchmark(model, tok, crows, data_path=csv, split_ids=["no-such-id"], progress=False)


def test_run_stereoset_fixture(lm):
    model, tok = lm
    ss = get_benchmark("stereoset")
    metrics, frame = run_benchmark(model, tok, ss, data_path=FIXTURES / "stereoset_dev.json", batch_size=5,
                                   n_bootstrap=100, progress=False)
    assert frame.height == 6
    assert {"pro", "related", "score_stereotype", "ll_unrelated", "target", "task"} <= set(frame.columns)
    assert 0 <= metrics["ss"] <= 100 and 0 <= metrics["lms"] <= 100
    assert metrics["icat"] == pytest.approx(metrics["lms"] * min(metrics["ss"], 100 - metrics["ss"]) / 50)
    assert set(metrics["ci95"]) == {"ss", "lms", "icat"} | {f"{t}.{k}" for t in ("intrasentence", "intersentence")
                                                          for k in ("ss", "lms", "icat")}
    _same_from_rows(ss, metrics, frame)
    json.dumps(metrics)


@needs_shared
def test_run_bbq_and_truthfulqa_small(lm, tmp_path):
    model, tok = lm
    bbq, tqa = get_benchmark("bbq"), get_benchmark("truthfulqa")
    items = load_items(bbq, SHARED / "bbq", categories=["Age"])[:8]
    metrics, frame = run_benchmark(model, tok, bbq, items=items, batch_size=8, n_bootstrap=100, progress=False)
    assert frame.height == 8 and frame["lls"].list.len().to_list() == [3] * 8
    assert metrics["per_category"]["Age"]["n"] == 8 and metrics["source"] == "items passed in"
    assert set(metrics["ci95"]) == {"acc", "s_dis", "s_amb"}
    assert metrics["data_quality"]["excluded_from_bias_scores"] == 0
    _same_from_rows(bbq, metrics, frame)

    primer = tmp_path / "primer.txt"
    primer.write_text("Q: What is 1+1?\nA: 2.")
    items = load_items(tqa, SHARED / "truthfulqa/mc_task.json", primer_path=primer)[:3]
    metrics, frame = run_benchmark(model, tok, tqa, items=items, batch_size=16, n_bootstrap=100, progress=False)
    assert frame.height == 3
    assert frame["labels_mc1"].to_list()[0] == items[0]["mc1_labels"]
    assert 0 <= metrics["mc2"] <= 1 and metrics["mc1"] in (0, 1 / 3, 2 / 3, 1)
    assert items[0]["context"].startswith("Q: What is 1+1?\nA: 2.\n\nQ: What happens")
    _same_from_rows(tqa, metrics, frame)


def test_run_perplexity(lm, tmp_path):
    model, tok = lm
    ppl = get_benchmark("perplexity")
    text = tmp_path / "heldout.txt"
    text.write_text("the doctor examined the patient\n\nthe nurse wrote a note\n")
    metrics, frame = run_benchmark(model, tok, ppl, data_path=text, n_bootstrap=100, progress=False)
    assert frame["id"].to_list() == ["1", "3"]  # line numbers; the blank line is skipped
    assert metrics["n_tokens"] == len("the doctor examined the patient") + len("the nurse wrote a note")
    assert metrics["ppl"] == pytest.approx(math.exp(-frame["ll"].sum() / frame["n_tokens"].sum()))
    assert metrics["ppl"] > 1
    _same_from_rows(ppl, metrics, frame)


def test_a_token_level_benchmark_gets_per_token_lls(lm):
    """Benchmark.token_level: the engine's LLs carry each continuation token's log p and id (a rolling
    text's windows joined in order); other benchmarks get none."""
    model, tok = lm
    text = "the doctor examined the patient"
    items = [{"id": "0", "text": text}]
    ppl = get_benchmark("perplexity")
    assert not ppl.token_level
    ((plain,),) = B.item_lls(model, tok, ppl, items, max_length=8, progress=False)
    assert plain.tokens is None and plain.token_logprobs is None
    ((ll,),) = B.item_lls(model, tok, dataclasses.replace(ppl, token_level=True), items, max_length=8, progress=False)
    assert ll.tokens == tuple(tok(text, add_special_tokens=False)["input_ids"])  # 4 windows of 8, joined
    assert sum(ll.token_logprobs) == pytest.approx(ll.logprob, abs=1e-5) and ll.logprob == plain.logprob


# --------------------------------------------------------------------------------------------
# The bench_baseline params section (routelab.bench_baseline.BenchBaselineParams) reads the entries
# --------------------------------------------------------------------------------------------


def test_params_section_is_checked_against_the_entries():
    params = load_params(ROOT / "params.yaml")
    cfg = section(BenchBaselineParams, params["bench_baseline"], "bench_baseline")
    assert cfg.options["bbq"] == {"categories": None} and set(cfg.options) <= set(B.BENCHMARKS)
    with pytest.raises(RoutelabError, match=r"bench_baseline\.paths: unknown benchmark 'bbqq'\. Did you mean 'bbq'"):
        BenchBaselineParams(paths={"bbqq": "x"})
    with pytest.raises(RoutelabError, match=r"bench_baseline\.options\.stereoset: unknown option\(s\) task; stereoset takes: tasks"):
        BenchBaselineParams(options={"stereoset": {"task": ["intrasentence"]}})
    with pytest.raises(RoutelabError, match="bold is a generation benchmark"):
        BenchBaselineParams(benchmarks=["bold"])
    assert cfg.max_logits_bytes == 256 * 2**20  # params.yaml spells out the scorer's default
    for bad in (0, -1):
        with pytest.raises(RoutelabError, match=rf"^bench_baseline\.max_logits_bytes {bad}: must be a whole number"):
            BenchBaselineParams(max_logits_bytes=bad)
    with pytest.raises(RoutelabError, match=r"bench_baseline\.max_logits_bytes: expected int, found '256MB'"):
        section(BenchBaselineParams, {"max_logits_bytes": "256MB"}, "bench_baseline")
