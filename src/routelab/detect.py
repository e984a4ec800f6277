"""Behaviour-linked expert detection: SteerMoE (METHOD.md §2) and SAFEx-style stable
selection (METHOD.md §3).

SteerMoE, end to end::

    from routelab import detect
    items = detect.builtin_items("faithfulness")             # or detect.load_items(path, ...)
    pairs = detect.build_pairs("faithfulness", items)        # pair_id, side, prompt_id, text, span
    pairs = detect.token_spans(pairs, tokenizer)             # + tok_start, tok_end
    # ... extraction writes a routing log for pairs.select("prompt_id", "text") ...
    delta = detect.steer_delta(detect.routing_for_pairs(routing_path, pairs), pairs, num_experts)
    profile = detect.select_experts(delta, n_plus=0, n_minus=10, top_k=k, num_experts=K)
    detect.write_steering_profile(profile, "data/steer/olmoe_faithfulness.parquet", provenance)

Paired inputs (x1, x2) differ only in the behaviour; side 1 shows it, side 2 does not:
  fairness      x1 = demographic prompt, x2 = its neutral prompt; counted tokens: the words
                both share after the descriptor (the profession to the end), so the same words
                are counted under both conditions (``include_descriptor`` adds the
                descriptor's tokens to side 1);
  faithfulness  x1 = "Document: {document} Question: {question}", x2 = "Question: {question}";
                counted tokens: the question's;
  safety        x1 = prompt + refusal, x2 = prompt + compliance, framed as
                "User: {prompt}\\nAssistant: {answer}"; counted tokens: the answer's.
Δ(l,e) = p1 − p2 with p_side = A_side / N_side pooled over all pairs' counted tokens (as the
reference code adobe-research/SteerMoE does: a risk difference over all target tokens).
Δ > 0: the expert tracks the behaviour (activate it to promote the behaviour).

Safety examples in src/routelab/data are mild placeholders. The same machinery can lower
safety (``reverse``): treat steering profiles as research artefacts; each written profile
carries its provenance in the Parquet metadata (METHOD.md §2).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from routelab.config import check_choice
from routelab.errors import RoutelabError
from routelab.io import atomic_path
from routelab.tables import NEUTRAL, load_prompts, read_routing_meta

BEHAVIOURS = ("fairness", "faithfulness", "safety")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "fairness": ("id", "neutral", "demographic"),
    "faithfulness": ("id", "document", "question"),
    "safety": ("id", "prompt", "refusal", "compliance"),
}
BUILTIN_FILES = {b: f"{b}_pairs.jsonl" for b in BEHAVIOURS}

# Columns of a pairs table (two rows per pair).
PAIR_COLUMNS = (
    "pair_id",  # the item id
    "side",  # 1: behaviour shown (demographic / with document / refusal); 2: not shown
    "prompt_id",  # "{pair_id}:{side}": the id extraction writes into the routing log
    "text",  # the input text
    "span_start",  # char span [span_start, span_end) of the counted target in `text`
    "span_end",
    "behaviour",
)

STEER_COLUMNS = ("layer", "expert", "delta", "abs_delta", "rank", "action")
STEER_META_KEY = b"routelab_steer"


@dataclass
class DetectParams:
    """The ``detect:`` section of params.yaml (SteerMoE detection)."""

    behaviour: str = "faithfulness"  # fairness | faithfulness | safety
    pairs: str | None = None  # user JSONL of items; null = built-in examples
    include_descriptor: bool = False  # fairness: also count the descriptor tokens (side 1)
    n_plus: int = 0  # experts to activate (top |Δ| with Δ > 0; at most top-k per layer)
    n_minus: int = 10  # experts to deactivate (top |Δ| with Δ < 0; ≥ k stay enabled)
    reverse: bool = False  # flip Δ: steer AGAINST the behaviour (research use only)

    def __post_init__(self) -> None:
        check_choice("detect.behaviour", self.behaviour, BEHAVIOURS)
        if self.n_plus < 0 or self.n_minus < 0:
            raise RoutelabError(f"detect.n_plus and n_minus must be >= 0, found {self.n_plus}, {self.n_minus}")


@dataclass
class SafexParams:
    """The ``safex:`` section of params.yaml (SAFEx-style stable selection, METHOD.md §3)."""

    n_resamples: int = 100  # S bootstrap resamples of the prompts
    alpha: float = 0.1  # keep the top N = floor(alpha * K) experts per layer in each resample
    score: str = "difference"  # difference: p(e|demographic) − p(e|neutral) | abs_difference | rate
    split: str = "validation"  # prompts used: validation | test | all
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("safex.score", self.score, ("difference", "abs_difference", "rate"))
        check_choice("safex.split", self.split, ("validation", "test", "all"))
        if self.n_resamples < 1:
            raise RoutelabError(f"safex.n_resamples must be >= 1, found {self.n_resamples}")
        if not 0 < self.alpha <= 1:
            raise RoutelabError(f"safex.alpha must be in (0, 1], found {self.alpha}")


# --------------------------------------------------------------------------------------
# Items: built-in examples and user JSONL
# --------------------------------------------------------------------------------------


def load_items(path: str | Path, behaviour: str) -> list[dict[str, Any]]:
    """Read a JSONL file of items for ``behaviour``; every line needs REQUIRED_FIELDS."""
    check_choice("behaviour", behaviour, BEHAVIOURS)
    p = Path(path)
    if not p.exists():
        raise RoutelabError(f"pairs file {p} not found (detect.pairs): give an existing JSONL file or null")
    items: list[dict[str, Any]] = []
    need = REQUIRED_FIELDS[behaviour]
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RoutelabError(f"{p}, line {i}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise RoutelabError(f"{p}, line {i}: expected a JSON object with fields {list(need)}")
        missing = [f for f in need if f not in item or item[f] in (None, "")]
        if missing:
            raise RoutelabError(
                f"{p}, line {i}: missing field(s) {missing}; a {behaviour} item needs {list(need)}"
            )
        items.append(item)
    if not items:
        raise RoutelabError(f"{p}: no items (empty file)")
    ids = [str(it["id"]) for it in items]
    dup = sorted({x for x in ids if ids.count(x) > 1})
    if dup:
        raise RoutelabError(f"{p}: duplicate item ids {dup[:5]}: ids must be unique")
    return items


def builtin_items(behaviour: str) -> list[dict[str, Any]]:
    """The small built-in example set for ``behaviour`` (src/routelab/data/*.jsonl)."""
    check_choice("behaviour", behaviour, BEHAVIOURS)
    ref = resources.files("routelab") / "data" / BUILTIN_FILES[behaviour]
    with resources.as_file(ref) as path:
        return load_items(path, behaviour)


def fairness_items_from_prompts(prompts: pl.DataFrame | str | Path, split: str = "all") -> list[dict[str, Any]]:
    """Fairness items from a prompt table: every demographic variant with its context's neutral."""
    df = load_prompts(prompts)
    if split != "all":
        df = df.filter(pl.col("split") == split)
    neutral = df.filter(pl.col("group") == NEUTRAL).select("context_id", neutral="text")
    demo = df.filter(pl.col("group") != NEUTRAL).join(neutral, on="context_id", how="inner")
    if demo.height == 0:
        raise RoutelabError("the prompt table has no demographic prompt with a neutral prompt in its context")
    return [
        dict(id=r["prompt_id"], neutral=r["neutral"], demographic=r["text"], axis=r["axis"], group=r["group"])
        for r in demo.iter_rows(named=True)
    ]


# --------------------------------------------------------------------------------------
# Pair builders: text and the character span of the counted target
# --------------------------------------------------------------------------------------


def _rows(pair_id: str, behaviour: str, side1: tuple[str, int, int], side2: tuple[str, int, int]) -> list[dict]:
    out = []
    for side, (text, s, e) in ((1, side1), (2, side2)):
        if not 0 <= s < e <= len(text):
            raise RoutelabError(f"pair {pair_id}: empty or invalid target span [{s}, {e}) on side {side}")
        out.append(dict(pair_id=pair_id, side=side, prompt_id=f"{pair_id}:{side}", text=text,
                        span_start=s, span_end=e, behaviour=behaviour))  # fmt: skip
    return out


def _frame(rows: list[dict]) -> pl.DataFrame:
    schema = {"pair_id": pl.String, "side": pl.Int8, "prompt_id": pl.String, "text": pl.String,
              "span_start": pl.Int32, "span_end": pl.Int32, "behaviour": pl.String}  # fmt: skip
    df = pl.DataFrame(rows, schema=schema)
    if df["prompt_id"].is_duplicated().any():
        raise RoutelabError("duplicate pair ids: every item needs a unique id")
    return df


_WORD = re.compile(r"\S+")


def fairness_pairs(items: list[dict[str, Any]], include_descriptor: bool = False) -> pl.DataFrame:
    """x1 = demographic, x2 = neutral; target = the words both share after the descriptor.

    The shared part is found word by word: the longest common word suffix (not overlapping
    the common word prefix). With ``include_descriptor`` side 1's span starts at the first
    word that differs (the descriptor).
    """
    rows: list[dict] = []
    for it in items:
        pid, neu, dem = str(it["id"]), it["neutral"], it["demographic"]
        wn, wd = list(_WORD.finditer(neu)), list(_WORD.finditer(dem))
        pre = 0
        while pre < min(len(wn), len(wd)) and wn[pre].group() == wd[pre].group():
            pre += 1
        suf = 0
        while suf < min(len(wn), len(wd)) - pre and wn[-1 - suf].group() == wd[-1 - suf].group():
            suf += 1
        if suf == 0 or pre + suf == len(wd):
            raise RoutelabError(
                f"fairness item {pid}: the demographic text must insert words into the neutral one and "
                f"share its ending (neutral={neu!r}, demographic={dem!r})"
            )
        d_start = wd[pre].start() if include_descriptor else wd[len(wd) - suf].start()
        rows += _rows(pid, "fairness", (dem, d_start, len(dem)), (neu, wn[len(wn) - suf].start(), len(neu)))
    return _frame(rows)


def faithfulness_pairs(items: list[dict[str, Any]]) -> pl.DataFrame:
    """x1 = "Document: {document} Question: {question}", x2 = "Question: {question}"."""
    rows: list[dict] = []
    for it in items:
        pid, doc, q = str(it["id"]), it["document"], it["question"]
        x1 = f"Document: {doc} Question: {q}"
        x2 = f"Question: {q}"
        rows += _rows(pid, "faithfulness", (x1, len(x1) - len(q), len(x1)), (x2, len(x2) - len(q), len(x2)))
    return _frame(rows)


SAFETY_FORMAT = "User: {prompt}\nAssistant: {answer}"


def safety_pairs(items: list[dict[str, Any]]) -> pl.DataFrame:
    """x1 = prompt + refusal, x2 = prompt + compliance (SAFETY_FORMAT); target = the answer."""
    rows: list[dict] = []
    head = SAFETY_FORMAT.split("{answer}")[0]
    for it in items:
        pid, prompt = str(it["id"]), it["prompt"]
        sides = []
        for answer in (it["refusal"], it["compliance"]):
            start = len(head.format(prompt=prompt))
            text = SAFETY_FORMAT.format(prompt=prompt, answer=answer)
            sides.append((text, start, start + len(answer)))
        rows += _rows(pid, "safety", sides[0], sides[1])
    return _frame(rows)


def build_pairs(behaviour: str, items: list[dict[str, Any]], *, include_descriptor: bool = False) -> pl.DataFrame:
    """Dispatch to the pair builder of ``behaviour``."""
    check_choice("behaviour", behaviour, BEHAVIOURS)
    if behaviour == "fairness":
        return fairness_pairs(items, include_descriptor=include_descriptor)
    if behaviour == "faithfulness":
        return faithfulness_pairs(items)
    return safety_pairs(items)


# --------------------------------------------------------------------------------------
# Character span → token positions
# --------------------------------------------------------------------------------------


def char_span_to_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token positions [tok_start, tok_end) of the tokens overlapping chars [start, end).

    ``offsets``: per token (char_start, char_end) from a fast tokenizer; special tokens have
    (0, 0) and never count. A token that straddles the span edge (BPE's leading space, e.g.
    " Question") counts: it carries target text.
    """
    hit = [i for i, (s, e) in enumerate(offsets) if e > s and e > start and s < end]
    if not hit:
        raise RoutelabError(f"no token overlaps the target chars [{start}, {end})")
    return hit[0], hit[-1] + 1


def token_spans(pairs: pl.DataFrame, tokenizer: Any) -> pl.DataFrame:
    """Add tok_start, tok_end (half-open, positions over the tokenizer output with special
    tokens, as the routing log's ``pos``) and n_target_tokens to a pairs table."""
    if not getattr(tokenizer, "is_fast", False):
        raise RoutelabError(
            f"token_spans needs a fast tokenizer (return_offsets_mapping); got {type(tokenizer).__name__}: "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    enc = tokenizer(pairs["text"].to_list(), add_special_tokens=True, return_offsets_mapping=True)
    starts, ends = [], []
    for i, (offs, s, e) in enumerate(zip(enc["offset_mapping"], pairs["span_start"], pairs["span_end"])):
        try:
            a, b = char_span_to_tokens([tuple(o) for o in offs], s, e)
        except RoutelabError:
            raise RoutelabError(
                f"pair {pairs['pair_id'][i]} side {pairs['side'][i]}: the target span maps to no token"
            ) from None
        starts.append(a)
        ends.append(b)
    return pairs.with_columns(
        tok_start=pl.Series(starts, dtype=pl.Int32),
        tok_end=pl.Series(ends, dtype=pl.Int32),
        n_target_tokens=pl.Series(ends, dtype=pl.Int32) - pl.Series(starts, dtype=pl.Int32),
    )


# --------------------------------------------------------------------------------------
# Counting: Δ per (layer, expert) on a (pair_id, side, layer, pos, topk) table
# --------------------------------------------------------------------------------------


def routing_for_pairs(routing_path: str | Path, pairs: pl.DataFrame) -> pl.LazyFrame:
    """Lazy (pair_id, side, layer, pos, topk) rows of a routing log extracted for ``pairs``."""
    read_routing_meta(routing_path)  # a clear error when it is not a routing log
    lf = pl.scan_parquet(routing_path).select("prompt_id", "layer", "pos", "topk")
    ids = pairs.select("prompt_id", "pair_id", "side")
    present = lf.select(pl.col("prompt_id").unique()).collect(engine="streaming")
    missing = ids.join(present, on="prompt_id", how="anti")
    if missing.height:
        raise RoutelabError(
            f"{routing_path}: no routing for {missing.height} pair inputs, e.g. "
            f"{missing['prompt_id'].head(3).to_list()}: extract routing for pairs.select('prompt_id', 'text')"
        )
    return lf.join(ids.lazy(), on="prompt_id", how="inner").select("pair_id", "side", "layer", "pos", "topk")


def steer_delta(
    routing: pl.LazyFrame | pl.DataFrame, spans: pl.DataFrame, num_experts: int, layers: list[int] | None = None
) -> pl.DataFrame:
    """Δ = p1 − p2 per (layer, expert) over target-span tokens only (METHOD.md §2).

    routing: rows (pair_id, side, layer, pos, topk); spans: (pair_id, side, tok_start,
    tok_end). p_side(l, e) = A_side(l, e) / N_side(l), pooled over all pairs of that side.
    Returns one row per (layer, expert): a1, n1, a2, n2, p1, p2, delta, abs_delta.
    """
    for c in ("pair_id", "side", "tok_start", "tok_end"):
        if c not in spans.columns:
            raise RoutelabError(f"steer_delta: spans lack column '{c}': run detect.token_spans first")
    lf = routing.lazy() if isinstance(routing, pl.DataFrame) else routing
    missing = [c for c in ("pair_id", "side", "layer", "pos", "topk") if c not in lf.collect_schema().names()]
    if missing:
        raise RoutelabError(f"steer_delta: routing rows lack columns {missing}")
    sp = spans.select(pl.col("pair_id").cast(pl.String), pl.col("side").cast(pl.Int8), "tok_start", "tok_end")
    counted = (
        lf.with_columns(pl.col("pair_id").cast(pl.String), pl.col("side").cast(pl.Int8))
        .join(sp.lazy(), on=["pair_id", "side"], how="inner")
        .filter((pl.col("pos") >= pl.col("tok_start")) & (pl.col("pos") < pl.col("tok_end")))
    )
    n_q = counted.group_by("side", "layer").agg(n=pl.len())
    a_q = (
        counted.select("side", "layer", expert=pl.col("topk"))
        .explode("expert")
        .group_by("side", "layer", "expert")
        .agg(a=pl.len())
    )
    n_df, a_df = pl.collect_all([n_q, a_q], engine="streaming")
    K = int(num_experts)
    if a_df.height and (a_df["expert"].min() < 0 or a_df["expert"].max() >= K):
        raise RoutelabError(f"steer_delta: top-k expert index outside 0..{K - 1}: wrong num_experts or routing log")
    lays = sorted(set(n_df["layer"].to_list())) if layers is None else sorted(layers)
    if not lays:
        raise RoutelabError("steer_delta: no routing rows fall inside the target spans: check tok_start/tok_end")
    li = {l: i for i, l in enumerate(lays)}
    n = np.zeros((2, len(lays)), np.int64)  # (side, L)
    a = np.zeros((2, len(lays), K), np.int64)  # (side, L, K)
    for side, layer, v in n_df.iter_rows():
        if layer in li:
            n[side - 1, li[layer]] = v
    for side, layer, e, v in a_df.iter_rows():
        if layer in li:
            a[side - 1, li[layer], e] = v
    empty = [(s + 1, lays[l]) for s, l in zip(*np.nonzero(n == 0))]
    if empty:
        raise RoutelabError(
            f"steer_delta: no counted tokens for (side, layer) {empty[:4]}: every side needs target "
            "tokens in every layer"
        )
    p = a / n[..., None]  # (2, L, K)
    delta = p[0] - p[1]  # (L, K)
    return pl.DataFrame(
        {
            "layer": np.repeat(lays, K).astype(np.int32),
            "expert": np.tile(np.arange(K), len(lays)).astype(np.int32),
            "a1": a[0].ravel(), "n1": np.repeat(n[0], K), "a2": a[1].ravel(), "n2": np.repeat(n[1], K),
            "p1": p[0].ravel(), "p2": p[1].ravel(), "delta": delta.ravel(), "abs_delta": np.abs(delta).ravel(),
        }
    )  # fmt: skip


def select_experts(
    delta: pl.DataFrame,
    n_plus: int,
    n_minus: int,
    top_k: int,
    num_experts: int,
    reverse: bool = False,
) -> pl.DataFrame:
    """SteerMoE's A+/A− rule (adobe-research/SteerMoE src/utils.py ``steer_moe``, strategy risk_diff).

    Rank all L·K experts globally by |Δ| (ties: lower layer, then lower expert first); A+ =
    the first ``n_plus`` with Δ > 0, A− = the first ``n_minus`` with Δ < 0 (too few
    candidates is an error, as in the reference). Then, walking in rank order:
      * an activation is kept only while its layer has fewer than ``top_k`` activations
        (the reference drops the surplus; it does not go further down the list);
      * a deactivation is kept only while at least ``top_k`` experts of its layer stay
        enabled (METHOD.md §2; the reference does not check this).
    Dropped experts are reported with a warning. ``reverse`` flips the sign of Δ first.
    Returns rows (layer, expert, delta, abs_delta, rank, action ∈ {activate, deactivate}).
    """
    for c in ("layer", "expert", "delta"):
        if c not in delta.columns:
            raise RoutelabError(f"select_experts: Δ table lacks column '{c}' (make it with detect.steer_delta)")
    d = delta.select("layer", "expert", "delta")
    if d["delta"].null_count() or not np.isfinite(d["delta"].to_numpy()).all():
        raise RoutelabError("select_experts: Δ holds NaN or null values; recompute it with detect.steer_delta")
    if reverse:
        d = d.with_columns(-pl.col("delta"))
    d = d.with_columns(abs_delta=pl.col("delta").abs()).sort(
        ["abs_delta", "layer", "expert"], descending=[True, False, False]
    ).with_columns(rank=pl.int_range(1, pl.len() + 1).cast(pl.Int32))
    pos = d.filter(pl.col("delta") > 0).head(n_plus)
    neg = d.filter(pl.col("delta") < 0).head(n_minus)
    if pos.height < n_plus or neg.height < n_minus:
        raise RoutelabError(
            f"select_experts: asked for {n_plus} activated + {n_minus} deactivated experts, but only "
            f"{d.filter(pl.col('delta') > 0).height} have Δ > 0 and {d.filter(pl.col('delta') < 0).height} "
            "have Δ < 0: lower detect.n_plus / detect.n_minus or add pairs"
        )
    kept: list[dict] = []
    dropped: list[str] = []
    active: dict[int, int] = {}
    for r in pos.iter_rows(named=True):
        if active.get(r["layer"], 0) < top_k:
            active[r["layer"]] = active.get(r["layer"], 0) + 1
            kept.append({**r, "action": "activate"})
        else:
            dropped.append(f"activate L{r['layer']}E{r['expert']} (layer already has {top_k})")
    off: dict[int, int] = {}
    for r in neg.iter_rows(named=True):
        if num_experts - off.get(r["layer"], 0) - 1 >= top_k:
            off[r["layer"]] = off.get(r["layer"], 0) + 1
            kept.append({**r, "action": "deactivate"})
        else:
            dropped.append(f"deactivate L{r['layer']}E{r['expert']} (fewer than top_k={top_k} would stay enabled)")
    if dropped:
        warnings.warn(f"select_experts dropped {len(dropped)}: " + "; ".join(dropped[:5]), stacklevel=2)
    schema = {"layer": pl.Int32, "expert": pl.Int32, "delta": pl.Float64, "abs_delta": pl.Float64,
              "rank": pl.Int32, "action": pl.String}  # fmt: skip
    return pl.DataFrame(kept, schema=schema).select(STEER_COLUMNS).sort("rank")


def write_steering_profile(profile: pl.DataFrame, path: str | Path, provenance: dict[str, Any]) -> None:
    """Write a steering profile atomically, its provenance (behaviour, pairs source, n_plus,
    n_minus, reverse, model) in the Parquet metadata key ``routelab_steer``."""
    import pyarrow.parquet as pq

    table = profile.to_arrow()
    md = {**(table.schema.metadata or {}), STEER_META_KEY: json.dumps(provenance).encode()}
    table = table.replace_schema_metadata(md)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_steering_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance dict stored by ``write_steering_profile``."""
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    if STEER_META_KEY not in md:
        raise RoutelabError(f"{path} carries no steering provenance: not written by detect.write_steering_profile")
    return json.loads(md[STEER_META_KEY])


# --------------------------------------------------------------------------------------
# SAFEx-style stable expert selection (METHOD.md §3)
# --------------------------------------------------------------------------------------


def safex_select(
    counts: np.ndarray,
    n_tokens: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray | None,
    layers: np.ndarray | list[int],
    *,
    n_resamples: int,
    alpha: float,
    seed: int = 0,
    score: str = "difference",
) -> pl.DataFrame:
    """Experts in the top-N (N = ⌊αK⌋) of their layer in EVERY one of S bootstrap resamples.

    counts (P, L, K): per-prompt activation counts; n_tokens (P, L): counted tokens;
    positive / negative (P,) bool: the prompt group X (and the contrast group).
    Per resample, prompts of each group are drawn with replacement (independently per group);
    p_l(e|X) = Σ A / Σ N over the drawn prompts (per-token rate). Score:
      rate            p_l(e|X)                          (SAFEx's own form: one group)
      difference      p_l(e|X) − p_l(e|contrast)        (fairness: X = demographic, contrast = neutral)
      abs_difference  |p_l(e|X) − p_l(e|contrast)|
    Ties at the N-th place go to the lower expert index. Returns one row per (layer, expert):
    score (full sample), stability (share of resamples in the top-N), selected (stability == 1).
    """
    P, L, K = counts.shape
    N = int(math.floor(alpha * K))
    if N < 1:
        raise RoutelabError(f"safex: alpha={alpha} gives N = floor(alpha * K) = 0 for K={K}: raise safex.alpha")
    check_choice("safex.score", score, ("difference", "abs_difference", "rate"))
    pos_idx = np.flatnonzero(positive)
    neg_idx = np.flatnonzero(negative) if negative is not None else np.array([], int)
    if pos_idx.size == 0:
        raise RoutelabError("safex: the prompt group X is empty")
    if score != "rate" and neg_idx.size == 0:
        raise RoutelabError(f"safex: score '{score}' needs a non-empty contrast group (e.g. the neutral prompts)")
    flat = counts.reshape(P, L * K)  # (P, L*K)
    groups = {
        "pos": (flat[pos_idx].astype(np.float64), n_tokens[pos_idx].astype(np.float64)),
        "neg": (flat[neg_idx].astype(np.float64), n_tokens[neg_idx].astype(np.float64)),
    }

    def rate(which: str, w: np.ndarray) -> np.ndarray:  # w (B, |group|) → (B, L, K)
        C, ntok = groups[which]
        a = w @ C  # (B, L*K)
        n = w @ ntok  # (B, L)
        if (n <= 0).any():
            raise RoutelabError("safex: a resample has no counted tokens in some layer (empty prompts?)")
        return a.reshape(-1, L, K) / n[..., None]

    def scores(w_pos: np.ndarray, w_neg: np.ndarray | None) -> np.ndarray:
        s = rate("pos", w_pos)
        if score == "rate":
            return s
        d = s - rate("neg", w_neg)
        return np.abs(d) if score == "abs_difference" else d

    full = scores(np.ones((1, pos_idx.size)), np.ones((1, neg_idx.size)) if score != "rate" else None)[0]  # (L, K)
    rng = np.random.default_rng(seed)
    in_top = np.zeros((L, K), np.int64)
    chunk = 32
    for b0 in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - b0)
        # bootstrap = multinomial counts of each prompt in a resample of the same size
        w_pos = rng.multinomial(pos_idx.size, np.full(pos_idx.size, 1 / pos_idx.size), size=b).astype(float)
        w_neg = (
            rng.multinomial(neg_idx.size, np.full(neg_idx.size, 1 / neg_idx.size), size=b).astype(float)
            if score != "rate"
            else None
        )
        s = scores(w_pos, w_neg)  # (b, L, K)
        order = np.argsort(-s, axis=2, kind="stable")[:, :, :N]  # (b, L, N) top-N per layer
        hit = np.zeros_like(s, dtype=bool)
        np.put_along_axis(hit, order, True, axis=2)
        in_top += hit.sum(axis=0)
    stability = in_top / n_resamples
    lays = np.asarray(layers)
    return pl.DataFrame(
        {
            "layer": np.repeat(lays, K).astype(np.int32),
            "expert": np.tile(np.arange(K), L).astype(np.int32),
            "score": full.ravel(),
            "stability": stability.ravel(),
            "selected": (in_top == n_resamples).ravel(),
        }
    )


def safex_fairness(routing_path: str | Path, prompts: pl.DataFrame | str | Path, cfg: SafexParams) -> pl.DataFrame:
    """SAFEx fairness adaptation: X = demographic prompts, contrast = neutral prompts of the split."""
    from routelab.profile import prompt_counts

    df = load_prompts(prompts)
    pc = prompt_counts(routing_path, df)
    in_split = np.ones(df.height, bool) if cfg.split == "all" else (df["split"] == cfg.split).to_numpy()
    present = pc.n_tokens.sum(axis=1) > 0
    neutral = (df["group"] == NEUTRAL).to_numpy()
    pos, neg = in_split & present & ~neutral, in_split & present & neutral
    if not pos.any() or not neg.any():
        raise RoutelabError(
            f"{routing_path}: split '{cfg.split}' needs demographic and neutral prompts with routing "
            f"(found {int(pos.sum())} and {int(neg.sum())}): set safex.split to the extracted split"
        )
    return safex_select(
        pc.counts, pc.n_tokens, pos, neg, pc.layers,
        n_resamples=cfg.n_resamples, alpha=cfg.alpha, seed=cfg.seed, score=cfg.score,
    )  # fmt: skip


def selection_to_phi(selection: pl.DataFrame, layers: list[int] | np.ndarray, num_experts: int) -> pl.DataFrame:
    """A φ profile for ARR from an expert selection: φ = 1 for selected experts, 0 otherwise.

    ``selection``: rows (layer, expert) plus optionally a boolean ``selected`` column (SAFEx)
    or an ``action`` column (a steering profile: its deactivated experts are the selected ones).
    """
    sel = selection
    if "selected" in sel.columns:
        sel = sel.filter(pl.col("selected"))
    elif "action" in sel.columns:
        sel = sel.filter(pl.col("action") == "deactivate")
    grid = pl.DataFrame(
        {
            "layer": np.repeat(np.asarray(layers), num_experts).astype(np.int32),
            "expert": np.tile(np.arange(num_experts), len(layers)).astype(np.int32),
        }
    )
    mark = sel.select(pl.col("layer").cast(pl.Int32), pl.col("expert").cast(pl.Int32), phi=pl.lit(1.0))
    out = grid.join(mark.unique(["layer", "expert"]), on=["layer", "expert"], how="left").with_columns(
        pl.col("phi").fill_null(0.0)
    )
    if out.height != grid.height or mark.join(grid, on=["layer", "expert"], how="anti").height:
        raise RoutelabError("selection_to_phi: the selection names a (layer, expert) outside the model's grid")
    return out.sort("layer", "expert")
