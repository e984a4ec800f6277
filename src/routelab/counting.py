"""The one pass over a routing log: per-prompt, per-layer top-k counts (FSP, SAFEx, SteerMoE).

Usage::

    from routelab.counting import prompt_counts
    pc = prompt_counts("data/routing/olmoe.parquet", prompts)              # every real token
    pc = prompt_counts(path, prompts, skip_first_token=True,
                       exclude_span=("desc_start", "desc_end"))            # FSP's length control
    pc = prompt_counts(path, pairs, include_span=("tok_start", "tok_end"))  # SteerMoE's target
    pc.counts    # (P, L, K) tokens of prompt p at layer l with expert e in the top-k
    pc.n_tokens  # (P, L) counted tokens of prompt p at layer l

Every detector in routelab is a function of these counts (docs/method.md §2, §6,
§7): FSP sums them per demographic group, SAFEx per bootstrap resample of prompts,
SteerMoE per side of its pairs (Δ = p1 − p2 from the side-1 vs side-2 sums).

Token filters (they compose; positions are the routing log's ``pos``):
  * ``skip_first_token``: drop position 0 of every prompt;
  * ``exclude_span=(start_col, end_col)``: drop positions in [start, end) of each prompt, the
    span read from those columns of the prompts table; a null span excludes nothing (a
    neutral prompt has no descriptor);
  * ``include_span=(start_col, end_col)``: count only positions in [start, end); every
    prompt needs a span.

Implementation: one lazy polars query over the routing Parquet (only ``prompt_id``,
``layer``, ``topk`` and, with token filters, ``pos`` are read), streamed in batches by the
streaming engine; each batch's exploded top-k is added into a dense per-prompt count array
(P, L, K), the only state kept. bench/fsp.py measures it on a log of OLMoE's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from routelab.errors import RoutelabError
from routelab.tables import RoutingMeta, scan_routing


@dataclass
class PromptCounts:
    """Per-prompt activation counts from a routing log."""

    meta: RoutingMeta
    prompt_ids: list[str]  # P prompt ids, in the order of the prompts table
    layers: np.ndarray  # (L,) true layer indices (meta.moe_layers order)
    counts: np.ndarray  # (P, L, K) int32: counted tokens of prompt p with expert e in the top-k
    n_tokens: np.ndarray  # (P, L) int64: counted tokens of prompt p at layer l
    in_log: np.ndarray  # (P,) bool: the prompt has rows in the routing log (before any filter)


# Streamed batches + numpy accumulation is ~2.5x faster and ~3.5x lighter than a polars
# group_by over (prompt, layer, expert) keys (bench/fsp.py). collect_batches is marked
# unstable in polars 2.x; the group_by path is kept as a fallback and is tested too.
USE_BATCHES = hasattr(pl.LazyFrame, "collect_batches")

Span = tuple[str, str]  # (start column, end column) of a half-open token span in the prompts table


def prompt_counts(
    routing_path: str | Path,
    prompts: pl.DataFrame,
    *,
    skip_first_token: bool = False,
    exclude_span: Span | None = None,
    include_span: Span | None = None,
) -> PromptCounts:
    """Count, per prompt, layer and expert, the counted tokens with the expert in the top-k.

    ``prompts``: a table with ``prompt_id`` (and the span columns the filters name). Every
    prompt of the routing log must be in it; prompts of the table absent from the log get
    zero counts and ``in_log`` False (callers check what they need).
    """
    routing_path = Path(routing_path)
    filtered = skip_first_token or exclude_span is not None or include_span is not None
    need = ["prompt_id", "layer", "topk"] + (["pos"] if filtered else [])
    lf, meta = scan_routing(routing_path, need)
    K, k = int(meta.num_experts), int(meta.top_k)
    layers = np.asarray(meta.moe_layers, dtype=np.int64)  # (L,)
    L = layers.size

    ids = prompts["prompt_id"].to_list()
    P = len(ids)
    in_log = _prompts_in_log(lf, prompts["prompt_id"], routing_path)
    enum = pl.Enum(ids)
    pidx = pl.col("prompt_id").cast(enum).to_physical().cast(pl.Int64)

    q = lf
    if skip_first_token:
        q = q.filter(pl.col("pos") > 0)
    if exclude_span is not None or include_span is not None:
        q = _span_filter(q, prompts, enum, exclude_span, include_span)
    # Layer → its index in moe_layers; a layer outside moe_layers fails the strict mapping.
    lidx = pl.col("layer").cast(pl.Int64).replace_strict(layers.tolist(), list(range(L)), return_dtype=pl.Int64)
    keyed = q.select(pidx=pidx, lidx=lidx, topk=pl.col("topk")).explode("topk")
    # flat key of (prompt, layer, expert) in a dense (P, L, K) array
    keyed = keyed.select(
        key=(pl.col("pidx") * (L * K) + pl.col("lidx") * K + pl.col("topk").cast(pl.Int64)),
        topk=pl.col("topk"),
    )
    dense = np.zeros(P * L * K, dtype=np.int32)  # (P*L*K,)
    try:
        if USE_BATCHES:
            for batch in keyed.collect_batches(engine="streaming", maintain_order=True):
                t = batch["topk"]
                _check_range(t.min(), t.max(), t.null_count(), K, routing_path)
                _accumulate(dense, batch["key"].to_numpy())
        else:
            agg = keyed.group_by("key").agg(
                c=pl.len(), lo=pl.col("topk").min(), hi=pl.col("topk").max(), nulls=pl.col("topk").null_count()
            ).collect(engine="streaming")
            nulls = agg["nulls"].sum() + agg["key"].null_count()
            _check_range(agg["lo"].min(), agg["hi"].max(), nulls, K, routing_path)
            dense[agg["key"].to_numpy()] = agg["c"].to_numpy()
    except pl.exceptions.InvalidOperationError as exc:
        if "replace_strict" not in str(exc) and "incomplete mapping" not in str(exc):
            raise
        found = sorted(lf.select(pl.col("layer").unique()).collect()["layer"].to_list())
        raise RoutelabError(
            f"{routing_path}: layers {found} in the rows but moe_layers={meta.moe_layers} in "
            "the metadata: a routing log of the wrong shape; re-run the `extract` stage"
        ) from None
    counts = dense.reshape(P, L, K)  # (P, L, K)
    # Each row contributes exactly k top-k entries, so tokens = Σ_e counts / k.
    n_tokens = counts.sum(axis=2, dtype=np.int64) // k  # (P, L)
    return PromptCounts(meta=meta, prompt_ids=ids, layers=layers, counts=counts, n_tokens=n_tokens, in_log=in_log)


def _span_filter(
    q: pl.LazyFrame, prompts: pl.DataFrame, enum: pl.Enum, exclude: Span | None, include: Span | None
) -> pl.LazyFrame:
    """Keep the rows outside each prompt's ``exclude`` span and inside its ``include`` span."""
    span_cols = [c for span in (exclude, include) if span is not None for c in span]
    missing = [c for c in dict.fromkeys(span_cols) if c not in prompts.columns]
    if missing:
        raise RoutelabError(
            f"prompts table lacks the token-span column(s) {missing} a token filter needs (has {prompts.columns}): "
            "build the table with a tokenizer (the `prompts` stage; SteerMoE pairs: routelab.steer.token_spans)"
        )
    cols = [pl.col("prompt_id").cast(enum)]
    keep = pl.lit(True)
    if exclude is not None:
        cols += [pl.col(exclude[0]).cast(pl.Int32).alias("_x0"), pl.col(exclude[1]).cast(pl.Int32).alias("_x1")]
        # a null span (a neutral prompt has no descriptor) excludes nothing
        keep &= pl.col("_x0").is_null() | (pl.col("pos") < pl.col("_x0")) | (pl.col("pos") >= pl.col("_x1"))
    if include is not None:
        nulls = prompts.filter(pl.col(include[0]).is_null() | pl.col(include[1]).is_null())
        if nulls.height:
            raise RoutelabError(
                f"prompts table: {nulls.height} rows have no token span in {list(include)}, e.g. "
                f"{nulls['prompt_id'].head(3).to_list()}: every counted prompt needs its target span"
            )
        cols += [pl.col(include[0]).cast(pl.Int32).alias("_i0"), pl.col(include[1]).cast(pl.Int32).alias("_i1")]
        keep &= (pl.col("pos") >= pl.col("_i0")) & (pl.col("pos") < pl.col("_i1"))
    spans = prompts.select(cols)
    return q.with_columns(pl.col("prompt_id").cast(enum)).join(spans.lazy(), on="prompt_id", how="left").filter(keep)


def _accumulate(dense: np.ndarray, keys: np.ndarray) -> None:
    """dense[keys] += 1 for every key (repeats counted).

    A batch of a prompt-major log covers a narrow key range: a bincount over that range is
    ~3x faster than np.add.at; a scattered batch (wide range) falls back to np.add.at.
    """
    if keys.size == 0:
        return
    lo, hi = int(keys.min()), int(keys.max())
    if hi - lo < 8 * keys.size:
        dense[lo : hi + 1] += np.bincount(keys - lo, minlength=hi - lo + 1).astype(dense.dtype)
    else:
        np.add.at(dense, keys, 1)


def _check_range(lo: int | None, hi: int | None, nulls: int, K: int, path: Path) -> None:
    """Top-k entries must be expert indices 0..K-1 (else keys would spill into the next layer)."""
    if nulls:
        raise RoutelabError(f"{path}: null top-k entries: the routing log is damaged; re-run `extract`")
    if lo is not None and (lo < 0 or hi >= K):
        raise RoutelabError(
            f"{path}: top-k expert index {lo if lo < 0 else hi} outside 0..{K - 1} "
            f"(num_experts={K} in the metadata): a routing log of the wrong shape; re-run `extract`"
        )


def _prompts_in_log(lf: pl.LazyFrame, ids: pl.Series, path: Path) -> np.ndarray:
    """(P,) bool: which prompts of the table have rows in the log. Every prompt of the log
    must be in the table (cheap: the log's unique ids only)."""
    found = lf.select(pl.col("prompt_id").unique()).collect(engine="streaming")["prompt_id"]
    unknown = found.filter(~found.is_in(ids.implode()))
    if unknown.len():
        raise RoutelabError(
            f"{path}: {unknown.len()} prompt ids are not in the prompts table, e.g. "
            f"{unknown.sort().head(3).to_list()}: count the routing log together with the "
            "prompts file it was extracted from"
        )
    return ids.is_in(found.implode()).to_numpy()
