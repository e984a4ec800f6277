"""Every table that crosses a stage boundary, defined once, with one checked reader each.

This module sits at the bottom of the import graph (it imports only ``errors`` and ``io``):
extraction, profiling, routing edits, detection, evaluation and the tests all read the same
definitions.

| table            | file                                    | written by          | reader                      |
|------------------|-----------------------------------------|---------------------|-----------------------------|
| routing log      | data/routing/<m>.parquet                | extract             | read_routing_meta, scan_routing |
| prompts          | data/prompts/<m>.parquet                | prompts             | load_prompts                |
| prompt texts     | a .txt or .parquet given by a user      | (user)              | read_prompt_texts           |
| φ profile        | data/profiles/<m>.parquet               | profile             | load_profile                |
| expert selection | data/selections/<m>_safex.parquet, steer | safex, steer       | load_selection              |
| per-item results | data/bench/<m>/<stage>/<bench>_<split>.parquet | bench_baseline, … | load_item_results     |
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from routelab.errors import RoutelabError
from routelab.io import read_table

# ============================================================================================
# Routing log: one row per (prompt, MoE layer, real token). Pads are never rows.
# ============================================================================================

ROUTING_META_KEY = b"routelab"
ROUTING_COLUMNS = (
    "prompt_id",  # string: id of the prompt (txt input: the line number from 0)
    "layer",  # int16: true decoder-layer index of the MoE block (dense layers have no rows)
    "pos",  # int32: token position from 0 over the tokenizer's output (special tokens included)
    "token_id",  # int32: the token at `pos`
    "logits",  # fixed_size_list<float32>[K]: router logits the routing rule ran on (edited
    #            when an edit was active, see the metadata `edit`); −inf marks a masked expert
    "topk",  # fixed_size_list<int16>[k]: selected experts, in the router's own order
)
# Routing probabilities are a pure function of `logits` (the family's score function: softmax
# for all families but DeepSeek-V3, which uses sigmoid); they are not stored twice.


@dataclass
class RoutingMeta:
    """The file metadata of a routing log (key ``routelab``, JSON): where it came from."""

    model: str  # the model's name or path
    family: str  # adapter family (routelab.adapters)
    num_experts: int  # K, routed experts per MoE layer
    top_k: int  # k
    moe_layers: list[int]  # true decoder-layer indices of the MoE blocks
    dtype: str  # model dtype during extraction
    transformers_version: str
    torch_version: str
    score_fn: str = "softmax"  # how probabilities follow from logits: softmax | sigmoid
    edit: dict[str, Any] | None = None  # the routing edit active during extraction, or None
    extra: dict[str, Any] = field(default_factory=dict)


def routing_schema(meta: RoutingMeta) -> pa.Schema:
    """The pyarrow schema of a routing log with K experts and top-k, carrying ``meta``."""
    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("layer", pa.int16()),
            ("pos", pa.int32()),
            ("token_id", pa.int32()),
            ("logits", pa.list_(pa.float32(), meta.num_experts)),
            ("topk", pa.list_(pa.int16(), meta.top_k)),
        ]
    )
    return schema.with_metadata({ROUTING_META_KEY: json.dumps(asdict(meta)).encode()})


def read_routing_meta(path: str | Path) -> RoutingMeta:
    """The metadata of a routing log; a clear error when the file is missing or not one."""
    path = Path(path)
    if not path.exists():
        raise RoutelabError(f"routing file {path} not found: run the `extract` stage first")
    try:
        md = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for non-Parquet files
        raise RoutelabError(f"{path} is not a Parquet file ({exc}): give a routing log written by `extract`") from None
    if ROUTING_META_KEY not in md:
        raise RoutelabError(
            f"{path} has no '{ROUTING_META_KEY.decode()}' metadata: not a routelab routing log "
            "(write one with `routelab extract` or the `extract` stage)"
        )
    meta = RoutingMeta(**json.loads(md[ROUTING_META_KEY]))
    if not meta.moe_layers or meta.num_experts < 1 or not 1 <= meta.top_k <= meta.num_experts:
        raise RoutelabError(
            f"{path}: metadata has moe_layers={meta.moe_layers}, num_experts={meta.num_experts}, "
            f"top_k={meta.top_k}: not a valid routing shape; re-run the `extract` stage"
        )
    return meta


def scan_routing(path: str | Path, columns: list[str] | None = None) -> tuple[pl.LazyFrame, RoutingMeta]:
    """(lazy frame over ``columns`` of a routing log, its metadata); the columns must exist."""
    meta = read_routing_meta(path)
    lf = pl.scan_parquet(path, glob=False)  # glob=False: brackets in a file name are text
    names = lf.collect_schema().names()
    missing = [c for c in (columns or ROUTING_COLUMNS) if c not in names]
    if missing:
        raise RoutelabError(f"{path} lacks columns {missing}: not a routing log (see routelab.tables)")
    return (lf.select(columns) if columns else lf), meta


# ============================================================================================
# Prompts: one row per prompt of the FARE prompt set (routelab.prompts builds it).
# ============================================================================================

NEUTRAL = "neutral"  # the `group` of neutral prompts (their `axis` is null)
PROMPT_SPLITS = ("validation", "test")
PROMPT_COLUMNS = (
    "prompt_id",  # "t03p07-neutral" / "t03p07-gender-female": unique, stable across runs
    "text",  # the prompt text
    "axis",  # one of vocab.AXES; null for neutral prompts
    "group",  # the descriptor ("female"); "neutral" for neutral prompts
    "context_id",  # "t03p07": template 3 x profession 7 (a neutral prompt and its variants)
    "template_id",  # index into Vocabulary.templates
    "profession",
    "split",  # validation | test, by context
    "desc_char_start",  # char span of the descriptor in `text` (null for neutral)
    "desc_char_end",
    "prof_char_start",  # char offset of the profession in `text`
    "n_tokens",  # token count with special tokens (null without a tokenizer)
    "n_descriptor_tokens",  # n_tokens − n_tokens(neutral of the context); 0 for neutral
    "desc_start",  # token span [desc_start, desc_end) of the descriptor (null for neutral)
    "desc_end",
    "length_matched",  # the variant is its neutral prompt with exactly one token inserted
)
PROMPT_REQUIRED = ("prompt_id", "text", "axis", "group", "context_id", "split")


def load_prompts(source: str | Path | pl.DataFrame) -> pl.DataFrame:
    """Read a prompts table (Parquet path or DataFrame) and check what profiling needs."""
    df, name = read_table(source, "prompts", "prompts")
    missing = [c for c in PROMPT_REQUIRED if c not in df.columns]
    if missing:
        raise RoutelabError(
            f"{name} lacks columns {missing} (has {df.columns}): build it with the `prompts` stage "
            "(routelab.prompts.build_prompts)"
        )
    if df["prompt_id"].n_unique() != df.height:
        raise RoutelabError(f"{name}: prompt_id values are not unique")
    bad = df.filter(pl.col("axis").is_null() != (pl.col("group") == NEUTRAL))
    if bad.height:
        raise RoutelabError(
            f"{name}: {bad.height} rows mix a null axis with a non-neutral group (or the other "
            f"way round), e.g. {bad['prompt_id'][0]!r}: neutral prompts have axis null and "
            f"group '{NEUTRAL}'"
        )
    return df


PROMPT_TEXT_FORMATS = "a .txt (UTF-8, one prompt per line) or a .parquet with columns prompt_id, text"


def read_prompt_texts(path: str | Path) -> list[tuple[str, str]]:
    """(prompt_id, text) pairs from a user's prompts file, for extraction.

    ``.txt``: UTF-8, one prompt per line, prompt_id = the line number from 0 (blank lines
    skipped, ids unchanged). ``.parquet``: columns prompt_id and text (the `prompts` stage's
    output). Any other suffix is refused rather than guessed (a .csv read as text would make its
    header and id column prompts).
    """
    path = Path(path)
    if not path.exists():
        raise RoutelabError(f"prompts file {path} not found")
    if path.is_dir():
        raise RoutelabError(f"prompts file {path} is a folder: give {PROMPT_TEXT_FORMATS}")
    if path.suffix == ".parquet":
        pairs = _parquet_prompts(path)
    elif path.suffix == ".txt":
        raw = path.read_bytes()
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise RoutelabError(
                f"prompts file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): "
                f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path}"
            ) from None
        pairs = [(str(i), line) for i, line in enumerate(lines) if line.strip()]
    else:
        raise RoutelabError(
            f"prompts file {path}: unknown format {path.suffix or '(no suffix)'!r}; give {PROMPT_TEXT_FORMATS}"
        )
    if not pairs:
        raise RoutelabError(f"prompts file {path} holds no prompts")
    return pairs


def _parquet_prompts(path: Path) -> list[tuple[str, str]]:
    """(prompt_id, text) of a prompts Parquet, every column checked."""
    try:
        schema = pl.scan_parquet(path, glob=False).collect_schema()  # glob=False: brackets in a name are text
    except (pl.exceptions.PolarsError, OSError):  # polars' own message is a multi-line query plan
        raise RoutelabError(f"prompts file {path} is not a readable Parquet file: give {PROMPT_TEXT_FORMATS}") from None
    missing = [c for c in ("prompt_id", "text") if c not in schema]
    if missing:
        raise RoutelabError(
            f"prompts file {path} lacks column(s) {', '.join(missing)} (has {', '.join(schema)}): "
            f"give {PROMPT_TEXT_FORMATS}"
        )
    if schema["text"] != pl.String:
        raise RoutelabError(
            f"prompts file {path}: column text holds {schema['text']}, not strings: give the prompts' texts")
    df = pl.read_parquet(path, columns=["prompt_id", "text"], glob=False)
    for col in ("prompt_id", "text"):
        nulls = df.filter(pl.col(col).is_null())
        if nulls.height:
            first = nulls.row(0, named=True)["prompt_id"] if col == "text" else None
            where = f" (first: prompt_id {first!r})" if first is not None else ""
            raise RoutelabError(f"prompts file {path}: {nulls.height} rows have a null {col}{where}; fill or drop them")
    ids = [str(i) for i in df["prompt_id"].to_list()]
    if len(set(ids)) != len(ids):
        raise RoutelabError(f"prompts file {path}: prompt_id values are not unique")
    return list(zip(ids, df["text"].to_list()))


# ============================================================================================
# φ profile: one row per (layer, expert) (routelab.profile computes it; ARR reads `phi`).
# ============================================================================================

PROFILE_COLUMNS = (
    "layer",  # true decoder-layer index of the MoE block (as in the routing log)
    "expert",  # routed expert index 0..K-1
    "f",  # activation rate over all counted tokens (neutral + demographic), in [0, 1]
    "p_neutral",  # P(e): activation rate on neutral prompts
    "p_demographic",  # activation rate on all demographic prompts pooled
    "ard", "jsd", "pmi", "entropy",  # raw metrics aggregated over groups (docs/method.md §2)
    "ard_norm", "jsd_norm", "pmi_norm", "entropy_norm",  # per-layer min-max normalised
    "phi",  # Σ w_i · m̂_i: the FSP sensitivity score ARR reads
    "ard_p",  # permutation p of the raw `ard` (relabelling within context; null if not tested)
    "ard_p_bh",  # ard_p Benjamini–Hochberg adjusted over all L·K experts
    "significant",  # ard_p_bh < profile.alpha: the expert stands above the noise floor
    "ard_top_group",  # the group with the largest ARD for this expert
    "layer_jsd",  # JSD(pooled demographic ‖ neutral) of the layer, bits (layer-constant)
    "layer_entropy_neutral",  # H(D_n) of the layer, bits (layer-constant)
    "layer_entropy_demographic",  # H(D_d), pooled demographic, bits (layer-constant)
)  # fmt: skip


def load_profile(
    source: str | Path | pl.DataFrame,
    *,
    num_experts: int | None = None,
    layers: list[int] | None = None,
    column: str = "phi",
) -> pl.DataFrame:
    """Read and check a φ profile: one row per (layer, expert), experts 0..K-1 in every layer,
    a finite ``column``; optionally the model's K and MoE layers. Returns it sorted."""
    df, name = read_table(source, "profile", "profile")
    missing = [c for c in ("layer", "expert", column) if c not in df.columns]
    if missing:
        raise RoutelabError(
            f"{name} lacks columns {missing} (has {df.columns}): give the profile the `profile` stage writes"
        )
    if df.height == 0:
        raise RoutelabError(f"{name}: the profile is empty; recompute it with the `profile` stage")
    vals = df[column].cast(pl.Float64)
    if vals.null_count() or not np.isfinite(vals.to_numpy()).all():
        raise RoutelabError(f"{name}: column '{column}' holds NaN, inf or null values; recompute the profile")
    if df.select("layer", "expert").is_duplicated().any():
        raise RoutelabError(f"{name}: duplicate (layer, expert) rows: one row per (layer, expert) expected")
    per_layer = df.group_by("layer").agg(n=pl.len(), lo=pl.col("expert").min(), hi=pl.col("expert").max())
    k_found = sorted(set(per_layer["n"].to_list()))
    K = num_experts if num_experts is not None else (k_found[0] if len(k_found) == 1 else None)
    bad = None if K is None else per_layer.filter((pl.col("n") != K) | (pl.col("lo") != 0) | (pl.col("hi") != K - 1))
    if K is None or bad.height:
        raise RoutelabError(
            f"{name}: a profile of the wrong shape: expected experts 0..{(K or 0) - 1} in every layer, "
            f"found per-layer counts {k_found}; recompute the profile for this model"
        )
    if layers is not None and sorted(per_layer["layer"].to_list()) != sorted(layers):
        raise RoutelabError(
            f"{name}: layers {sorted(per_layer['layer'].to_list())} but the model's MoE layers are "
            f"{sorted(layers)}: a profile of another model; recompute it from this model's routing"
        )
    return df.sort("layer", "expert")


# ============================================================================================
# Expert selection: a set of (layer, expert) chosen by a detector (SAFEx, SteerMoE).
# ============================================================================================

SELECTION_COLUMNS = (
    "layer",  # true decoder-layer index
    "expert",  # expert index 0..K-1
    "score",  # the detector's score (SAFEx: rate difference; SteerMoE: Δ)
    "selected",  # bool: in the selection (SAFEx: stable in every resample)
)
# A steering selection (SteerMoE A+/A−) carries `action` (activate | deactivate) instead of
# `selected`: every row is selected, with its direction.
STEER_ACTIONS = ("activate", "deactivate")


def load_selection(source: str | Path | pl.DataFrame) -> pl.DataFrame:
    """Read and check an expert selection: (layer, expert) and ``selected`` or ``action``."""
    df, name = read_table(source, "expert selection", "safex")
    missing = [c for c in ("layer", "expert") if c not in df.columns]
    if missing or not ({"selected", "action"} & set(df.columns)):
        raise RoutelabError(
            f"{name} lacks columns {missing or ['selected or action']} (has {df.columns}): "
            "give a selection written by the `safex` or `steer` stage"
        )
    if "action" in df.columns:
        bad = sorted(set(df["action"].drop_nulls().to_list()) - set(STEER_ACTIONS))
        if bad or df["action"].null_count():
            raise RoutelabError(f"{name}: unknown action(s) {bad or ['null']}; use activate | deactivate")
    if df.select("layer", "expert").is_duplicated().any():
        raise RoutelabError(f"{name}: duplicate (layer, expert) rows")
    return df


# ============================================================================================
# Per-item results: one row per benchmark item under one condition (routelab.benchmarks).
# ============================================================================================

ITEM_KEY = "id"  # every per-item table has a unique string id: the key of paired comparisons


def load_item_results(path: str | Path, stage: str = "bench_baseline") -> pl.DataFrame:
    """Read a per-item results table; ``stage`` names the stage that writes it (for the hint)."""
    df, name = read_table(path, "per-item results", stage)
    if ITEM_KEY not in df.columns:
        raise RoutelabError(f"{name} has no '{ITEM_KEY}' column: not a per-item results table")
    if df[ITEM_KEY].n_unique() != df.height:
        raise RoutelabError(f"{name}: item ids are not unique")
    return df
