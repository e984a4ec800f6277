"""Validation / test splits of benchmark items: deterministic, stratified, order-free.

Usage::

    split = split_benchmark(get_benchmark("crows_pairs"), items, seed=0, val_fraction=0.5)
    test_items = select_items(items, split["test"])

The bench_baseline stage writes one split file per benchmark; every later stage reads it back,
so all stages score the same items.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from routelab.benchmarks.base import Benchmark, Item
from routelab.errors import RoutelabError


def split_items(
    items: Sequence[Mapping[str, Any]] | pl.DataFrame,
    seed: int,
    val_fraction: float,
    stratify_key: str | None = None,
    id_key: str = "id",
    cluster_key: str | None = None,
) -> dict[str, list[str]]:
    """Deterministic, stratified validation/test split of item ids.

    Within each stratum (value of ``stratify_key``; one stratum when None) the units are
    sorted, shuffled with a generator seeded by (seed, crc32(stratum)) and the first
    round(val_fraction · n_units) go to validation. A unit is an item, or with ``cluster_key``
    all items sharing that field's value (a cluster never straddles the split; an item without
    the field is a unit of its own; a cluster's stratum is its first item's). The result does
    not depend on the input order or on the other strata. Returns {"validation": [...],
    "test": [...]} of item ids, each sorted.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise RoutelabError(f"val_fraction must lie in [0, 1], got {val_fraction}")
    rows = items.to_dicts() if isinstance(items, pl.DataFrame) else list(items)
    if not rows:
        raise RoutelabError("split_items: no items to split")
    if id_key not in rows[0] or (stratify_key is not None and stratify_key not in rows[0]):
        raise RoutelabError(
            f"split_items: items lack '{id_key}' or the stratify key '{stratify_key}'; "
            f"available fields: {', '.join(rows[0])}"
        )
    ids = [str(r[id_key]) for r in rows]
    if len(set(ids)) != len(ids):
        raise RoutelabError("split_items: item ids are not unique")
    units: dict[str, list[str]] = {}  # unit label -> item ids
    stratum_of: dict[str, str] = {}
    for r, i in zip(rows, ids):
        label = r.get(cluster_key) if cluster_key is not None else None
        unit = f"cluster:{label}" if label not in (None, "") else f"item:{i}"
        units.setdefault(unit, []).append(i)
        stratum_of.setdefault(unit, "" if stratify_key is None else str(r[stratify_key]))
    strata: dict[str, list[str]] = {}
    for unit in units:
        strata.setdefault(stratum_of[unit], []).append(unit)
    val: list[str] = []
    test: list[str] = []
    for stratum in sorted(strata):
        members = sorted(strata[stratum])
        rng = np.random.default_rng([int(seed), zlib.crc32(stratum.encode())])
        perm = [members[j] for j in rng.permutation(len(members))]
        k = int(round(val_fraction * len(members)))
        val.extend(i for unit in perm[:k] for i in units[unit])
        test.extend(i for unit in perm[k:] for i in units[unit])
    return {"validation": sorted(val), "test": sorted(test)}


def split_benchmark(bench: Benchmark, items: Sequence[Item], seed: int, val_fraction: float) -> dict[str, Any]:
    """:func:`split_items` with the benchmark's own stratify key, plus the settings used."""
    split = split_items(items, seed, val_fraction, bench.stratify_key, cluster_key=bench.cluster_key)
    return {
        "benchmark": bench.name,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "stratify_key": bench.stratify_key,
        "cluster_key": bench.cluster_key,
        "n": len(items),
        **split,
    }


def select_items(items: Sequence[Item], ids: Iterable[str]) -> list[Item]:
    """The items whose id is in ``ids`` (in the items' order); unknown ids are an error."""
    wanted = [str(i) for i in ids]
    by_id = {it["id"]: it for it in items}
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        raise RoutelabError(
            f"{len(unknown)} split id(s) are not in the benchmark data (first: {unknown[:5]}): the "
            "split file was made from other data; re-run the bench_baseline stage to re-create it"
        )
    keep = set(wanted)
    return [it for it in items if it["id"] in keep]
