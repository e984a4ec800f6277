"""routelab.steer: pair builders, span → tokens, Δ through routelab.counting, A+/A−."""

from __future__ import annotations

import json
import warnings

import numpy as np
import polars as pl
import pytest

import tiny_models
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.prompts import PromptsParams, build_prompts
from routelab.steer import (
    BEHAVIOURS,
    SteerParams,
    build_pairs,
    builtin_items,
    char_span_to_tokens,
    fairness_items_from_prompts,
    fairness_pairs,
    load_items,
    read_steering_provenance,
    select_experts,
    steer_delta,
    token_spans,
    write_steering_profile,
)
from routelab.vocab import Vocabulary
from test_counting import routing_meta, write_routing

word_tokenizer = tiny_models.text_tokenizer


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
# SteerMoE Δ from a routing log, counted by routelab.counting
# ---------------------------------------------------------------------------------------

# K = 4, k = 1, one layer. Pair A side 1: pos 0 (outside the span) → 3; pos 1, 2 → 0, 1.
# Pair A side 2: pos 0, 1 → 1, 1. Pair B side 1: pos 0 → 0; side 2: pos 0 → 2.
ROUTING = [
    ("A", 1, 0, 0, [3]), ("A", 1, 0, 1, [0]), ("A", 1, 0, 2, [1]),
    ("A", 2, 0, 0, [1]), ("A", 2, 0, 1, [1]),
    ("B", 1, 0, 0, [0]), ("B", 2, 0, 0, [2]),
]  # fmt: skip
PAIRS = pl.DataFrame(
    {"pair_id": ["A", "A", "B", "B"], "side": [1, 2, 1, 2], "prompt_id": ["A:1", "A:2", "B:1", "B:2"],
     "tok_start": [1, 0, 0, 0], "tok_end": [3, 2, 1, 1]}
)  # fmt: skip


def test_steer_delta_hand_value(tmp_path):
    rows = [(f"{p}:{s}", l, pos, t) for p, s, l, pos, t in ROUTING]
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 1, [0]), rows)
    d = steer_delta(path, PAIRS).sort("expert")
    # side 1: 3 counted tokens → experts 0, 1, 0 → p1 = [2/3, 1/3, 0, 0] (pos 0 of A not counted)
    # side 2: 3 counted tokens → experts 1, 1, 2 → p2 = [0, 2/3, 1/3, 0]
    assert d["n1"].to_list() == [3] * 4 and d["n2"].to_list() == [3] * 4
    assert d["a1"].to_list() == [2, 1, 0, 0] and d["a2"].to_list() == [0, 2, 1, 0]
    assert d["delta"].to_list() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])
    extra = pl.DataFrame({"pair_id": ["C"], "side": [1], "prompt_id": ["C:1"], "tok_start": [0], "tok_end": [1]})
    more = pl.concat([PAIRS, extra], how="vertical_relaxed")
    with pytest.raises(RoutelabError, match="no routing for 1 pair inputs"):
        steer_delta(path, more)
    with pytest.raises(RoutelabError, match="token_spans"):
        steer_delta(path, PAIRS.drop("tok_end"))
    with pytest.raises(RoutelabError, match=r"no counted tokens for \(side, layer\) \[\(2, 0\)\]"):
        # side 2's spans lie past the end of its texts
        steer_delta(path, PAIRS.with_columns(tok_start=pl.Series([1, 5, 0, 5]), tok_end=pl.Series([3, 6, 1, 6])))


def reference_delta(path, pairs: pl.DataFrame, K: int) -> pl.DataFrame:
    """The pre-counting.py algorithm (detect.steer_delta): a polars join + group_by over the
    target-span rows of the log. An independent reference for the counts-based Δ."""
    sp = pairs.select("prompt_id", pl.col("side").cast(pl.Int8), "tok_start", "tok_end")
    counted = (
        pl.scan_parquet(path).select("prompt_id", "layer", "pos", "topk")
        .join(sp.lazy(), on="prompt_id", how="inner")
        .filter((pl.col("pos") >= pl.col("tok_start")) & (pl.col("pos") < pl.col("tok_end")))
    )  # fmt: skip
    n_df = counted.group_by("side", "layer").agg(n=pl.len()).collect()
    a_df = (
        counted.select("side", "layer", expert=pl.col("topk")).explode("expert")
        .group_by("side", "layer", "expert").agg(a=pl.len()).collect()
    )  # fmt: skip
    lays = sorted(set(n_df["layer"].to_list()))
    li = {l: i for i, l in enumerate(lays)}
    n = np.zeros((2, len(lays)), np.int64)  # (side, L)
    a = np.zeros((2, len(lays), K), np.int64)  # (side, L, K)
    for side, layer, v in n_df.iter_rows():
        n[side - 1, li[layer]] = v
    for side, layer, e, v in a_df.iter_rows():
        a[side - 1, li[layer], e] = v
    p = a / n[..., None]  # (2, L, K)
    delta = p[0] - p[1]
    return pl.DataFrame(
        {
            "layer": np.repeat(lays, K).astype(np.int32), "expert": np.tile(np.arange(K), len(lays)).astype(np.int32),
            "a1": a[0].ravel(), "n1": np.repeat(n[0], K), "a2": a[1].ravel(), "n2": np.repeat(n[1], K),
            "p1": p[0].ravel(), "p2": p[1].ravel(), "delta": delta.ravel(), "abs_delta": np.abs(delta).ravel(),
        }
    )  # fmt: skip


def test_steer_delta_equals_the_group_by_reference(tmp_path):
    rng = np.random.default_rng(1)
    K, k, layers = 16, 4, [1, 3, 4]
    rows, spans = [], []
    for pair in range(40):
        for side in (1, 2):
            T = int(rng.integers(5, 30))
            s0 = int(rng.integers(0, T - 2))
            spans.append((f"p{pair}", side, f"p{pair}:{side}", s0, int(rng.integers(s0 + 1, T + 1))))
            for l in layers:
                rows += [(f"p{pair}:{side}", l, pos, rng.choice(K, k, replace=False).tolist()) for pos in range(T)]
    path = write_routing(tmp_path / "r.parquet", routing_meta(K, k, layers), rows, row_group_size=500)
    pairs = pl.DataFrame(spans, schema=["pair_id", "side", "prompt_id", "tok_start", "tok_end"], orient="row")
    new = steer_delta(path, pairs)
    assert new.equals(reference_delta(path, pairs, K))  # bit-identical, same dtypes
    # every position of a span has one row per layer: N_side = Σ (tok_end − tok_start) over that side
    for side, col in ((1, "n1"), (2, "n2")):
        want = pairs.filter(pl.col("side") == side).select((pl.col("tok_end") - pl.col("tok_start")).sum()).item()
        assert new[col].unique().to_list() == [want]
    assert (new["a1"] + new["a2"]).sum() == k * (new["n1"] + new["n2"]).sum() / K  # k entries per counted token


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
    with pytest.raises(RoutelabError, match="lower steer.n_plus / steer.n_minus"):
        select_experts(delta_table(), n_plus=4, n_minus=0, top_k=1, num_experts=4)


def test_steering_profile_provenance_roundtrip(tmp_path):
    out = select_experts(delta_table(), n_plus=1, n_minus=1, top_k=1, num_experts=4)
    prov = {"behaviour": "faithfulness", "pairs": "builtin", "n_plus": 1, "n_minus": 1, "reverse": False}
    write_steering_profile(out, tmp_path / "s.parquet", prov)
    assert pl.read_parquet(tmp_path / "s.parquet").equals(out)
    assert read_steering_provenance(tmp_path / "s.parquet") == prov


def test_steer_params():
    assert SteerParams().n_minus == 10
    with pytest.raises(RoutelabError, match="steer.behaviour: unknown value 'safty'. Did you mean 'safety'"):
        SteerParams(behaviour="safty")
    with pytest.raises(RoutelabError, match="steer.n_plus and steer.n_minus"):
        section(SteerParams, {"n_minus": -1}, "steer")
    with pytest.raises(RoutelabError, match="unknown key 'n_mins'"):
        section(SteerParams, {"n_mins": 3}, "steer")


def test_steer_delta_end_to_end_from_token_spans(tmp_path):
    # builtin safety pairs → token spans → a log whose top-1 expert is token_id mod 4
    pairs = build_pairs("safety", builtin_items("safety"))
    tok = word_tokenizer(pairs["text"].to_list())
    pairs = token_spans(pairs, tok)
    rows, hits = [], np.zeros((2, 4), int)  # (side, K) target-token hits, counted here by hand
    for pid, side, text, s, e in pairs.select("prompt_id", "side", "text", "tok_start", "tok_end").iter_rows():
        for pos, t in enumerate(tok(text)["input_ids"]):
            rows.append((pid, 0, pos, [t % 4]))
            hits[side - 1, t % 4] += s <= pos < e
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 1, [0]), rows)
    d = steer_delta(path, pairs).sort("expert")
    n = [pairs.filter(pl.col("side") == s)["n_target_tokens"].sum() for s in (1, 2)]
    assert d["n1"].to_list() == [n[0]] * 4 and d["n2"].to_list() == [n[1]] * 4
    assert d["a1"].to_list() == hits[0].tolist() and d["a2"].to_list() == hits[1].tolist()
    assert d["delta"].to_list() == pytest.approx((hits[0] / n[0] - hits[1] / n[1]).tolist())
    assert d["abs_delta"].max() > 0  # refusals and compliances differ
