"""routelab.benchmarks.splits: deterministic, stratified, order-free validation/test splits.

Run: .venv/bin/pytest tests/test_benchmarks_splits.py
"""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest

from routelab.benchmarks import get_benchmark, load_items, select_items, split_benchmark, split_items
from routelab.errors import RoutelabError
from test_benchmarks_base import FIXTURES


def test_split_is_deterministic_stratified_and_order_free():
    items = [{"id": f"{s}-{i}", "bias_type": s} for s in ("a", "b", "c") for i in range(s == "a" and 40 or 10)]
    split = split_items(items, seed=1, val_fraction=0.3, stratify_key="bias_type")
    assert split == split_items(list(reversed(items)), seed=1, val_fraction=0.3, stratify_key="bias_type")
    assert split != split_items(items, seed=2, val_fraction=0.3, stratify_key="bias_type")
    assert set(split["validation"]) | set(split["test"]) == {it["id"] for it in items}
    assert not set(split["validation"]) & set(split["test"])
    per_stratum = Counter(i.split("-")[0] for i in split["validation"])
    assert per_stratum == {"a": 12, "b": 3, "c": 3}
    # adding a stratum leaves the others' assignment unchanged
    more = items + [{"id": f"d-{i}", "bias_type": "d"} for i in range(10)]
    split2 = split_items(more, seed=1, val_fraction=0.3, stratify_key="bias_type")
    assert [i for i in split2["validation"] if not i.startswith("d")] == split["validation"]
    frame = split_items(pl.DataFrame(items), seed=1, val_fraction=0.3, stratify_key="bias_type")
    assert frame == split
    with pytest.raises(RoutelabError, match="val_fraction"):
        split_items(items, seed=1, val_fraction=1.5)
    with pytest.raises(RoutelabError, match="stratify key 'category'"):
        split_items(items, seed=1, val_fraction=0.5, stratify_key="category")


def test_split_benchmark_records_settings():
    items = load_items(get_benchmark("stereoset"), FIXTURES / "stereoset_dev.json")
    s = split_benchmark(get_benchmark("stereoset"), items, seed=0, val_fraction=0.5)
    assert s["stratify_key"] == "stratum" and s["seed"] == 0 and s["n"] == 6
    assert len(s["validation"]) + len(s["test"]) == 6
    json.dumps(s)


def test_select_items_keeps_order_and_rejects_unknown_ids():
    items = [{"id": str(i)} for i in range(5)]
    assert select_items(items, ["3", "1"]) == [{"id": "1"}, {"id": "3"}]
    with pytest.raises(RoutelabError, match="not in the benchmark data.*bench_baseline"):
        select_items(items, ["9"])
