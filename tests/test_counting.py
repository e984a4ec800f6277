"""routelab.counting: per-prompt top-k counts of hand-built routing logs under each token filter."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import routelab.counting as counting
from routelab.counting import prompt_counts
from routelab.errors import RoutelabError
from routelab.tables import RoutingMeta, routing_schema

# ---------------------------------------------------------------------------------------
# helpers: a routing log written with the real schema (also used by the other test files)
# ---------------------------------------------------------------------------------------


def routing_meta(K: int, k: int, layers: list[int]) -> RoutingMeta:
    return RoutingMeta(model="test", family="olmoe", num_experts=K, top_k=k, moe_layers=layers,
                       dtype="float32", transformers_version="test", torch_version="test")  # fmt: skip


def write_routing(path, m: RoutingMeta, rows: list[tuple[str, int, int, list[int]]], row_group_size: int = 64):
    """rows: (prompt_id, layer, pos, topk). Logits put the top-k first (consistent)."""
    logits = []
    for _, _, _, top in rows:
        lg = np.zeros(m.num_experts, np.float32)
        ok = [e for e in top if 0 <= e < m.num_experts]  # a broken top-k still gets written
        lg[ok] = np.arange(len(ok), 0, -1, dtype=np.float32)  # first in topk = largest
        logits.append(lg.tolist())
    table = pa.table(
        {
            "prompt_id": [r[0] for r in rows],
            "layer": [r[1] for r in rows],
            "pos": [r[2] for r in rows],
            "token_id": [0] * len(rows),
            "logits": logits,
            "topk": [r[3] for r in rows],
        },
        schema=routing_schema(m),
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


# ---------------------------------------------------------------------------------------
# A hand-built log: K = 4, k = 2, MoE layers 0 and 2.
#   prompt a (3 tokens)  layer 0: [0,1] [1,2] [2,3]          layer 2: [3,0] [3,1] [3,2]
#   prompt b (4 tokens)  layer 0: [0,1] [0,2] [0,3] [1,2]    layer 2: [2,3] [2,0] [2,1] [3,0]
#   prompt c: in the table, no rows in the log
# Spans: exclude (desc) a: none, b: [1, 3); include (target) a: [1, 3), b: [0, 2), c: [0, 1).
# ---------------------------------------------------------------------------------------

TOPK = {
    ("a", 0): [[0, 1], [1, 2], [2, 3]],
    ("a", 2): [[3, 0], [3, 1], [3, 2]],
    ("b", 0): [[0, 1], [0, 2], [0, 3], [1, 2]],
    ("b", 2): [[2, 3], [2, 0], [2, 1], [3, 0]],
}
HAND_ROWS = [(p, layer, pos, top) for (p, layer), tops in TOPK.items() for pos, top in enumerate(tops)]
TABLE = pl.DataFrame(
    {"prompt_id": ["a", "b", "c"], "x0": [None, 1, None], "x1": [None, 3, None], "i0": [1, 0, 0], "i1": [3, 2, 1]}
)
ZERO = [[0, 0, 0, 0], [0, 0, 0, 0]]

# Expected counts (P=3, L=2, K=4) and counted tokens (P, L), counted by hand from TOPK.
EXPECTED = {
    "none": (
        [[[1, 2, 2, 1], [1, 1, 1, 3]], [[3, 2, 2, 1], [2, 1, 3, 2]], ZERO],
        [[3, 3], [4, 4], [0, 0]],
    ),
    "skip": (  # position 0 dropped: a keeps pos 1, 2; b keeps pos 1, 2, 3
        [[[0, 1, 2, 1], [0, 1, 1, 2]], [[2, 1, 2, 1], [2, 1, 2, 1]], ZERO],
        [[2, 2], [3, 3], [0, 0]],
    ),
    "exclude": (  # b loses pos 1, 2; a (null span) keeps everything
        [[[1, 2, 2, 1], [1, 1, 1, 3]], [[1, 2, 1, 0], [1, 0, 1, 2]], ZERO],
        [[3, 3], [2, 2], [0, 0]],
    ),
    "skip+exclude": (  # b keeps pos 3 only
        [[[0, 1, 2, 1], [0, 1, 1, 2]], [[0, 1, 1, 0], [1, 0, 0, 1]], ZERO],
        [[2, 2], [1, 1], [0, 0]],
    ),
    "include": (  # a: pos 1, 2; b: pos 0, 1
        [[[0, 1, 2, 1], [0, 1, 1, 2]], [[2, 1, 1, 0], [1, 0, 2, 1]], ZERO],
        [[2, 2], [2, 2], [0, 0]],
    ),
    "skip+include": (  # b: pos 1 only
        [[[0, 1, 2, 1], [0, 1, 1, 2]], [[1, 0, 1, 0], [1, 0, 1, 0]], ZERO],
        [[2, 2], [1, 1], [0, 0]],
    ),
}
FILTERS = {
    "none": {},
    "skip": {"skip_first_token": True},
    "exclude": {"exclude_span": ("x0", "x1")},
    "skip+exclude": {"skip_first_token": True, "exclude_span": ("x0", "x1")},
    "include": {"include_span": ("i0", "i1")},
    "skip+include": {"skip_first_token": True, "include_span": ("i0", "i1")},
}


@pytest.mark.parametrize("batches", [True, False])
@pytest.mark.parametrize("case", list(FILTERS))
def test_known_counts_under_each_filter(tmp_path, monkeypatch, case, batches):
    monkeypatch.setattr(counting, "USE_BATCHES", batches)
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 2, [0, 2]), HAND_ROWS, row_group_size=5)
    pc = prompt_counts(path, TABLE, **FILTERS[case])
    counts, n_tokens = EXPECTED[case]
    assert pc.counts.tolist() == counts
    assert pc.n_tokens.tolist() == n_tokens
    assert pc.prompt_ids == ["a", "b", "c"] and pc.layers.tolist() == [0, 2]
    assert pc.in_log.tolist() == [True, True, False]
    assert pc.counts.dtype == np.int32 and pc.counts.shape == (3, 2, 4)


def test_scattered_row_order_gives_the_same_counts(tmp_path):
    # rows shuffled, one row per row group: every batch spans a wide key range (np.add.at path)
    rows = [HAND_ROWS[i] for i in np.random.default_rng(0).permutation(len(HAND_ROWS))]
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 2, [0, 2]), rows, row_group_size=1)
    pc = prompt_counts(path, TABLE, exclude_span=("x0", "x1"))
    assert pc.counts.tolist() == EXPECTED["exclude"][0]


def test_accumulate_counts_repeats():
    dense = np.zeros(10, np.int32)
    counting._accumulate(dense, np.array([2, 2, 3, 9]))  # wide range → np.add.at
    counting._accumulate(dense, np.array([4, 4, 4, 5]))  # narrow range → bincount
    assert dense.tolist() == [0, 0, 2, 1, 3, 1, 0, 0, 0, 1]


# ---------------------------------------------------------------------------------------
# bad input: clear errors
# ---------------------------------------------------------------------------------------


def test_span_errors(tmp_path):
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 2, [0, 2]), HAND_ROWS)
    with pytest.raises(RoutelabError, match=r"lacks the token-span column\(s\) \['tok_start', 'tok_end'\]"):
        prompt_counts(path, TABLE, include_span=("tok_start", "tok_end"))
    with pytest.raises(RoutelabError, match=r"2 rows have no token span in \['x0', 'x1'\]"):
        prompt_counts(path, TABLE, include_span=("x0", "x1"))  # a null include span is an error


def test_unknown_prompt_ids(tmp_path):
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 2, [0, 2]), HAND_ROWS)
    with pytest.raises(RoutelabError, match=r"1 prompt ids are not in the prompts table, e.g. \['b'\]"):
        prompt_counts(path, TABLE.filter(pl.col("prompt_id") != "b"))


@pytest.mark.parametrize("bad", [4, -1])
@pytest.mark.parametrize("batches", [True, False])
def test_topk_out_of_range(tmp_path, monkeypatch, bad, batches):
    monkeypatch.setattr(counting, "USE_BATCHES", batches)
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 2, [0]), [("a", 0, 0, [0, bad])])
    with pytest.raises(RoutelabError, match=f"index {bad} outside 0..3.*wrong shape"):
        prompt_counts(path, TABLE)


def test_layer_outside_metadata(tmp_path):
    path = write_routing(tmp_path / "r.parquet", routing_meta(4, 2, [0]), [("a", 5, 0, [0, 1])])
    with pytest.raises(RoutelabError, match=r"layers \[5\] in the rows but moe_layers=\[0\]"):
        prompt_counts(path, TABLE)


def test_not_a_routing_log(tmp_path):
    path = tmp_path / "bad.parquet"
    t = pa.table({"prompt_id": ["a"], "layer": pa.array([0], pa.int16())})
    pq.write_table(t.replace_schema_metadata(routing_schema(routing_meta(4, 2, [0])).metadata), path)
    with pytest.raises(RoutelabError, match=r"lacks columns \['topk'\]"):
        prompt_counts(path, TABLE)
    with pytest.raises(RoutelabError, match="not found"):
        prompt_counts(tmp_path / "none.parquet", TABLE)
