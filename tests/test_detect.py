"""routelab.detect: pair builders, span → tokens, SteerMoE Δ and A+/A−, SAFEx."""

from __future__ import annotations

import json
import warnings

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tiny_models
from routelab.detect import (
    BEHAVIOURS,
    DetectParams,
    SafexParams,
    build_pairs,
    builtin_items,
    char_span_to_tokens,
    fairness_items_from_prompts,
    fairness_pairs,
    load_items,
    read_steering_provenance,
    routing_for_pairs,
    safex_fairness,
    safex_select,
    select_experts,
    selection_to_phi,
    steer_delta,
    token_spans,
    write_steering_profile,
)
from routelab.errors import RoutelabError
from routelab.prompts import PromptsParams, build_prompts
from routelab.tables import RoutingMeta, routing_schema as arrow_schema
from routelab.vocab import Vocabulary


word_tokenizer = tiny_models.text_tokenizer


def write_routing(path, K: int, k: int, rows: list[tuple[str, int, int, list[int]]]):
    m = RoutingMeta(model="test", family="olmoe", num_experts=K, top_k=k, moe_layers=sorted({r[1] for r in rows}),
                    dtype="float32", transformers_version="test", torch_version="test")  # fmt: skip
    table = pa.table(
        {
            "prompt_id": [r[0] for r in rows], "layer": [r[1] for r in rows], "pos": [r[2] for r in rows],
            "token_id": [0] * len(rows), "logits": [[0.0] * K] * len(rows), "topk": [r[3] for r in rows],
        },
        schema=arrow_schema(m),
    )  # fmt: skip
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------
# items and pairs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_builtin_items_build_pairs(behaviour):
    items = builtin_items(behaviour)
    assert len(items) >= 5
    pairs = build_pairs(behaviour, items)
    assert pairs.height == 2 * len(items)
    assert sorted(pairs["side"].unique().to_list()) == [1, 2]
    for r in pairs.iter_rows(named=True):
        target = r["text"][r["span_start"] : r["span_end"]]
        assert target.strip() == target and target  # a clean, non-empty span
        assert r["prompt_id"] == f"{r['pair_id']}:{r['side']}"


def test_faithfulness_and_safety_spans():
    items = [{"id": "a", "document": "Paris is in Italy.", "question": "Where is Paris?"}]
    p = build_pairs("faithfulness", items)
    assert p["text"].to_list() == ["Document: Paris is in Italy. Question: Where is Paris?", "Question: Where is Paris?"]
    assert [t[s:e] for t, s, e in p.select("text", "span_start", "span_end").iter_rows()] == ["Where is Paris?"] * 2
    items = [{"id": "b", "prompt": "Hi?", "refusal": "No.", "compliance": "Yes, sure."}]
    p = build_pairs("safety", items)
    assert p["text"].to_list() == ["User: Hi?\nAssistant: No.", "User: Hi?\nAssistant: Yes, sure."]
    assert [t[s:e] for t, s, e in p.select("text", "span_start", "span_end").iter_rows()] == ["No.", "Yes, sure."]


def test_fairness_span_is_the_shared_ending():
    items = [{"id": "f", "neutral": "The doctor examined the patient.", "demographic": "The female doctor examined the patient."}]
    p = fairness_pairs(items)
    spans = [t[s:e] for t, s, e in p.select("text", "span_start", "span_end").iter_rows()]
    assert spans == ["doctor examined the patient."] * 2
    p = fairness_pairs(items, include_descriptor=True)
    assert p["text"][0][p["span_start"][0] :] == "female doctor examined the patient."
    with pytest.raises(RoutelabError, match="fairness item x"):
        fairness_pairs([{"id": "x", "neutral": "A b.", "demographic": "C d."}])


def test_fairness_items_from_prompts():
    v = Vocabulary(axes={"gender": ("female",)}, professions=("doctor",), templates=("The {person} slept.",))
    items = fairness_items_from_prompts(build_prompts(v, None, PromptsParams()))
    assert items == [dict(id="t00p00-gender-female", neutral="The doctor slept.",
                          demographic="The female doctor slept.", axis="gender", group="female")]  # fmt: skip


def test_load_items_errors_name_file_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "1", "document": "d"}) + "\n")
    with pytest.raises(RoutelabError, match=r"pairs\.jsonl, line 1: missing field\(s\) \['question'\]"):
        load_items(path, "faithfulness")
    path.write_text("{not json\n")
    with pytest.raises(RoutelabError, match="line 1: not valid JSON"):
        load_items(path, "faithfulness")
    with pytest.raises(RoutelabError, match="not found"):
        load_items(tmp_path / "none.jsonl", "safety")
    with pytest.raises(RoutelabError, match="Did you mean 'safety'"):
        load_items(path, "safty")


# ---------------------------------------------------------------------------------------
# char span → token positions
# ---------------------------------------------------------------------------------------


def test_char_span_to_tokens_known_answer():
    # [BOS] "Question" ":" " Where" " is" → (0,0) special never counts; " Where" straddles
    offsets = [(0, 0), (0, 8), (8, 9), (9, 15), (15, 18)]
    assert char_span_to_tokens(offsets, 10, 18) == (3, 5)
    assert char_span_to_tokens(offsets, 0, 8) == (1, 2)
    with pytest.raises(RoutelabError):
        char_span_to_tokens(offsets, 20, 25)


def test_token_spans_with_a_fast_tokenizer():
    pairs = build_pairs("faithfulness", [{"id": "a", "document": "Paris is in Italy.", "question": "Where is Paris?"}])
    tok = word_tokenizer(pairs["text"].to_list())
    out = token_spans(pairs, tok)
    for r in out.iter_rows(named=True):
        ids = tok(r["text"])["input_ids"]
        assert tok.decode(ids[r["tok_start"] : r["tok_end"]]) == "Where is Paris ?"
    # side 2: [BOS] Question : Where is Paris ? → positions 3..6
    assert out.filter(pl.col("side") == 2).select("tok_start", "tok_end", "n_target_tokens").row(0) == (3, 7, 4)


def test_token_spans_needs_a_fast_tokenizer():
    class Slow:
        is_fast = False

    pairs = build_pairs("faithfulness", builtin_items("faithfulness")[:1])
    with pytest.raises(RoutelabError, match="fast tokenizer"):
        token_spans(pairs, Slow())


# ---------------------------------------------------------------------------------------
# SteerMoE Δ on a constructed routing table
# ---------------------------------------------------------------------------------------

# K = 4, k = 1, one layer. Pair A side 1: pos 0 (outside the span) → 3; pos 1, 2 → 0, 1.
# Pair A side 2: pos 0, 1 → 1, 1. Pair B side 1: pos 0 → 0; side 2: pos 0 → 2.
ROUTING = [
    ("A", 1, 0, 0, [3]), ("A", 1, 0, 1, [0]), ("A", 1, 0, 2, [1]),
    ("A", 2, 0, 0, [1]), ("A", 2, 0, 1, [1]),
    ("B", 1, 0, 0, [0]), ("B", 2, 0, 0, [2]),
]  # fmt: skip
SPANS = pl.DataFrame({"pair_id": ["A", "A", "B", "B"], "side": [1, 2, 1, 2], "tok_start": [1, 0, 0, 0], "tok_end": [3, 2, 1, 1]})


def test_steer_delta_hand_value():
    routing = pl.DataFrame(ROUTING, schema=["pair_id", "side", "layer", "pos", "topk"], orient="row")
    d = steer_delta(routing, SPANS, num_experts=4).sort("expert")
    # side 1: 3 counted tokens → experts 0, 1, 0 → p1 = [2/3, 1/3, 0, 0] (pos 0 of A not counted)
    # side 2: 3 counted tokens → experts 1, 1, 2 → p2 = [0, 2/3, 1/3, 0]
    assert d["n1"].to_list() == [3] * 4 and d["n2"].to_list() == [3] * 4
    assert d["delta"].to_list() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])


def test_steer_delta_from_a_routing_file(tmp_path):
    rows = [(f"{p}:{s}", l, pos, t) for p, s, l, pos, t in ROUTING]
    path = write_routing(tmp_path / "r.parquet", 4, 1, rows)
    pairs = SPANS.with_columns(prompt_id=pl.col("pair_id") + ":" + pl.col("side").cast(pl.String))
    d = steer_delta(routing_for_pairs(path, pairs), pairs, num_experts=4).sort("expert")
    assert d["delta"].to_list() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])
    more = pl.concat([pairs, pl.DataFrame({"pair_id": ["C"], "side": [1], "tok_start": [0], "tok_end": [1], "prompt_id": ["C:1"]})], how="vertical_relaxed")
    with pytest.raises(RoutelabError, match="no routing for 1 pair inputs"):
        routing_for_pairs(path, more)


def delta_table() -> pl.DataFrame:
    # L0: [.5, .4, −.3, 0]; L1: [.2, −.6, −.1, −.05]
    return pl.DataFrame({"layer": [0] * 4 + [1] * 4, "expert": list(range(4)) * 2,
                         "delta": [0.5, 0.4, -0.3, 0.0, 0.2, -0.6, -0.1, -0.05]})  # fmt: skip


def test_select_experts_rule():
    # |Δ| ranking: (1,1) .6, (0,0) .5, (0,1) .4, (0,2) .3, (1,0) .2, (1,2) .1, (1,3) .05, (0,3) 0
    # A+ = first 2 with Δ > 0: (0,0), (0,1); top_k = 1 per layer → (0,1) is dropped
    # A− = first 3 with Δ < 0: (1,1), (0,2), (1,2); ≥ 1 enabled per layer holds → all kept
    with pytest.warns(UserWarning, match="dropped 1"):
        out = select_experts(delta_table(), n_plus=2, n_minus=3, top_k=1, num_experts=4)
    assert out.select("layer", "expert", "action", "rank").rows() == [
        (1, 1, "deactivate", 1), (0, 0, "activate", 2), (0, 2, "deactivate", 4), (1, 2, "deactivate", 6)
    ]  # fmt: skip


def test_select_experts_keeps_top_k_enabled():
    d = pl.DataFrame({"layer": [0] * 4, "expert": [0, 1, 2, 3], "delta": [-0.4, -0.3, -0.2, -0.1]})
    with pytest.warns(UserWarning, match="fewer than top_k=2"):
        out = select_experts(d, n_plus=0, n_minus=3, top_k=2, num_experts=4)
    assert out["expert"].to_list() == [0, 1]  # 4 − 2 = 2 experts stay enabled


def test_select_experts_reverse_and_too_few():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = select_experts(delta_table(), n_plus=1, n_minus=1, top_k=1, num_experts=4, reverse=True)
    assert out.select("layer", "expert", "action").rows() == [(1, 1, "activate"), (0, 0, "deactivate")]
    with pytest.raises(RoutelabError, match="lower detect.n_plus"):
        select_experts(delta_table(), n_plus=4, n_minus=0, top_k=1, num_experts=4)


def test_steering_profile_provenance_roundtrip(tmp_path):
    out = select_experts(delta_table(), n_plus=1, n_minus=1, top_k=1, num_experts=4)
    prov = {"behaviour": "faithfulness", "pairs": "builtin", "n_plus": 1, "n_minus": 1, "reverse": False}
    write_steering_profile(out, tmp_path / "s.parquet", prov)
    assert pl.read_parquet(tmp_path / "s.parquet").equals(out)
    assert read_steering_provenance(tmp_path / "s.parquet") == prov


def test_detect_params():
    assert DetectParams().n_minus == 10
    with pytest.raises(RoutelabError, match="Did you mean 'safety'"):
        DetectParams(behaviour="safty")


# ---------------------------------------------------------------------------------------
# SAFEx intersection
# ---------------------------------------------------------------------------------------


def safex_case():
    # L = 1, K = 4, 10 tokens per prompt. X (10 prompts): expert 2 on every token; half the
    # prompts also use expert 1 on every token, the other half expert 3. Contrast: 10 prompts
    # on expert 0 only.
    P = 20
    counts = np.zeros((P, 1, 4), int)
    counts[:10, 0, 2] = 10
    counts[:5, 0, 1] = 10
    counts[5:10, 0, 3] = 10
    counts[10:, 0, 0] = 10
    n_tokens = np.full((P, 1), 10)
    pos = np.arange(P) < 10
    return counts, n_tokens, pos, ~pos


def test_safex_intersection():
    counts, n, pos, neg = safex_case()
    # N = floor(0.5 · 4) = 2: expert 2 is top-2 in every resample; 1 and 3 swap places
    out = safex_select(counts, n, pos, neg, [7], n_resamples=50, alpha=0.5, seed=0).sort("expert")
    assert out.filter("selected")["expert"].to_list() == [2]
    stab = dict(zip(out["expert"], out["stability"]))
    assert stab[2] == 1.0 and stab[0] == 0.0
    assert 0 < stab[1] < 1 and 0 < stab[3] < 1 and stab[1] + stab[3] == pytest.approx(1.0)
    assert out["score"].to_list() == pytest.approx([-1.0, 0.5, 1.0, 0.5])  # difference, full sample
    assert out["layer"].unique().to_list() == [7]
    # N = 1: only expert 2
    out1 = safex_select(counts, n, pos, neg, [7], n_resamples=20, alpha=0.25, seed=1)
    assert out1.filter("selected")["expert"].to_list() == [2]
    # abs_difference: |−1| for expert 0 ties expert 2 at 1.0 → both top-2 always
    outa = safex_select(counts, n, pos, neg, [7], n_resamples=20, alpha=0.5, score="abs_difference")
    assert sorted(outa.filter("selected")["expert"].to_list()) == [0, 2]


def test_safex_errors():
    counts, n, pos, neg = safex_case()
    with pytest.raises(RoutelabError, match="raise safex.alpha"):
        safex_select(counts, n, pos, neg, [0], n_resamples=5, alpha=0.2)
    with pytest.raises(RoutelabError, match="contrast group"):
        safex_select(counts, n, pos, None, [0], n_resamples=5, alpha=0.5)
    with pytest.raises(RoutelabError, match="alpha"):
        SafexParams(alpha=0.0)


def test_safex_fairness_on_a_routing_file(tmp_path):
    v = Vocabulary(axes={"gender": ("female", "male")}, professions=("doctor", "nurse"),
                   templates=("The {person} slept .", "We met the {person} ."))  # fmt: skip
    prompts = build_prompts(v, None, PromptsParams(test_fraction=0.0))
    rows = []
    for pid, g, text in prompts.select("prompt_id", "group", "text").iter_rows():
        for pos in range(len(text.split())):
            rows.append((pid, 3, pos, [5 if g != "neutral" else 1, 0]))  # demographic → expert 5
    path = write_routing(tmp_path / "r.parquet", 8, 2, rows)
    out = safex_fairness(path, prompts, SafexParams(alpha=0.125, n_resamples=10))
    assert out.filter("selected").select("layer", "expert").rows() == [(3, 5)]
    phi = selection_to_phi(out, [3], 8)
    assert phi.height == 8 and phi.filter(pl.col("phi") == 1.0)["expert"].to_list() == [5]


def test_selection_to_phi_from_steering_profile():
    out = select_experts(delta_table(), n_plus=1, n_minus=2, top_k=1, num_experts=4)
    phi = selection_to_phi(out, [0, 1], 4)
    assert phi.filter(pl.col("phi") == 1.0).select("layer", "expert").rows() == [(0, 2), (1, 1)]
    with pytest.raises(RoutelabError, match="outside"):
        selection_to_phi(pl.DataFrame({"layer": [5], "expert": [0]}), [0, 1], 4)
