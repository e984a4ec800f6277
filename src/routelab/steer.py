"""SteerMoE: behaviour-linked expert detection from paired inputs (docs/method.md §6).

End to end (the params section is ``steer:``, see SteerParams)::

    from routelab import steer
    items = steer.builtin_items("faithfulness")            # or steer.load_items(path, ...)
    pairs = steer.build_pairs("faithfulness", items)       # pair_id, side, prompt_id, text, span
    pairs = steer.token_spans(pairs, tokenizer)            # + tok_start, tok_end
    # ... extraction writes a routing log for pairs.select("prompt_id", "text") ...
    delta = steer.steer_delta(routing_path, pairs)         # Δ per (layer, expert)
    profile = steer.select_experts(delta, n_plus=0, n_minus=10, top_k=k, num_experts=K)
    steer.write_steering_profile(profile, "data/steer/olmoe_faithfulness.parquet", provenance)

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
reference code adobe-research/SteerMoE does: a risk difference over all target tokens). The
counts come from routelab.counting, restricted to each input's target token span.
Δ > 0: the expert tracks the behaviour (activate it to promote the behaviour).

Safety examples in src/routelab/data are mild placeholders. The same machinery can lower
safety (``reverse``): treat steering profiles as research artefacts; each written profile
carries its provenance in the Parquet metadata (docs/method.md §6).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from routelab.config import check_choice
from routelab.counting import prompt_counts
from routelab.conditions import Condition, build
from routelab.extract import extract_routing
from routelab.interventions import Intervention, Outcome, Run, delta_line, results_table
from routelab.errors import RoutelabError
from routelab.io import atomic_path, write_parquet
from routelab.tables import NEUTRAL, load_prompts

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
TARGET_SPAN = ("tok_start", "tok_end")  # token span added by token_spans: the counted tokens

STEER_COLUMNS = ("layer", "expert", "delta", "abs_delta", "rank", "action")
STEER_META_KEY = b"routelab_steer"


@dataclass
class SteerParams:
    """The ``steer:`` section of params.yaml (SteerMoE detection; read by the `steer` stage)."""

    behaviour: str = "faithfulness"  # fairness | faithfulness | safety
    pairs: str | None = None  # user JSONL of items; null = built-in examples
    include_descriptor: bool = False  # fairness: also count the descriptor tokens (side 1)
    n_plus: int = 0  # experts to activate (top |Δ| with Δ > 0; at most top-k per layer)
    n_minus: int = 10  # experts to deactivate (top |Δ| with Δ < 0; ≥ k stay enabled)
    reverse: bool = False  # flip Δ: steer AGAINST the behaviour (fairness: deactivate what demographic tokens favour)
    split: str = "validation"  # fairness: prompts the pairs come from (detection never sees the test split)

    def __post_init__(self) -> None:
        check_choice("steer.behaviour", self.behaviour, BEHAVIOURS)
        check_choice("steer.split", self.split, ("validation", "test", "all"))
        if self.n_plus < 0 or self.n_minus < 0:
            raise RoutelabError(f"steer.n_plus and steer.n_minus must be >= 0, found {self.n_plus}, {self.n_minus}")


# --------------------------------------------------------------------------------------
# Items: built-in examples and user JSONL
# --------------------------------------------------------------------------------------


def load_items(path: str | Path, behaviour: str) -> list[dict[str, Any]]:
    """Read a JSONL file of items for ``behaviour``; every line needs REQUIRED_FIELDS."""
    check_choice("steer.behaviour", behaviour, BEHAVIOURS)
    p = Path(path)
    if not p.exists():
        raise RoutelabError(
            f"pairs file {p} not found (steer.pairs): give an existing JSONL file, or null for the built-in examples"
        )
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
    check_choice("steer.behaviour", behaviour, BEHAVIOURS)
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
    df = pl.DataFrame(rows, schema=schema).select(PAIR_COLUMNS)
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
    check_choice("steer.behaviour", behaviour, BEHAVIOURS)
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
            f"SteerMoE target spans need a fast tokenizer (character offsets), found "
            f"{type(tokenizer).__name__}: use a model whose folder holds a tokenizer.json"
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
# Δ per (layer, expert): counts of the target tokens from routelab.counting
# --------------------------------------------------------------------------------------


def steer_delta(routing_path: str | Path, pairs: pl.DataFrame) -> pl.DataFrame:
    """Δ = p1 − p2 per (layer, expert) over target-span tokens only (docs/method.md §6).

    routing_path: a routing log extracted for ``pairs.select("prompt_id", "text")``; pairs:
    (prompt_id, side, tok_start, tok_end), the output of token_spans. p_side(l, e) =
    A_side(l, e) / N_side(l), pooled over all pairs of that side, from the per-prompt counts
    of routelab.counting restricted to [tok_start, tok_end).
    Returns one row per (layer, expert): a1, n1, a2, n2, p1, p2, delta, abs_delta.
    """
    missing = [c for c in ("prompt_id", "side", *TARGET_SPAN) if c not in pairs.columns]
    if missing:
        raise RoutelabError(
            f"pairs table lacks columns {missing}: add the target token spans with routelab.steer.token_spans"
        )
    side = pairs["side"].cast(pl.Int64).to_numpy()  # (P,)
    if not np.isin(side, (1, 2)).all():
        raise RoutelabError(f"pairs table: side must be 1 or 2, found {sorted(set(side.tolist()) - {1, 2})}")
    pc = prompt_counts(routing_path, pairs, include_span=TARGET_SPAN)
    if not pc.in_log.all():
        absent = [pid for pid, ok in zip(pc.prompt_ids, pc.in_log) if not ok]
        raise RoutelabError(
            f"{routing_path}: no routing for {len(absent)} pair inputs, e.g. {absent[:3]}: extract routing "
            "for every pair input (prompt_id, text of the pairs table)"
        )
    a = np.stack([pc.counts[side == s].sum(axis=0, dtype=np.int64) for s in (1, 2)])  # (2, L, K)
    n = np.stack([pc.n_tokens[side == s].sum(axis=0) for s in (1, 2)])  # (2, L)
    empty = [(int(s) + 1, int(pc.layers[l])) for s, l in zip(*np.nonzero(n == 0))]
    if empty:
        raise RoutelabError(
            f"{routing_path}: no counted tokens for (side, layer) {empty[:4]}: every side needs target "
            "tokens in every layer; check the pairs' tok_start/tok_end against the routing log"
        )
    p = a / n[..., None]  # (2, L, K)
    delta = p[0] - p[1]  # (L, K)
    L, K = delta.shape
    return pl.DataFrame(
        {
            "layer": np.repeat(pc.layers, K).astype(np.int32),  # (L*K,)
            "expert": np.tile(np.arange(K), L).astype(np.int32),
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
        enabled (docs/method.md §6; the reference does not check this).
    Dropped experts are reported with a warning. ``reverse`` flips the sign of Δ first.
    Returns rows (layer, expert, delta, abs_delta, rank, action ∈ {activate, deactivate}).
    """
    for c in ("layer", "expert", "delta"):
        if c not in delta.columns:
            raise RoutelabError(
                f"select_experts: Δ table lacks column '{c}' (make it with routelab.steer.steer_delta)"
            )
    d = delta.select("layer", "expert", "delta")
    if d["delta"].null_count() or not np.isfinite(d["delta"].to_numpy()).all():
        raise RoutelabError(
            "select_experts: Δ holds NaN or null values; recompute it with routelab.steer.steer_delta"
        )
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
            "have Δ < 0: lower steer.n_plus / steer.n_minus or add pairs"
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
    table = profile.to_arrow()
    md = {**(table.schema.metadata or {}), STEER_META_KEY: json.dumps(provenance).encode()}
    table = table.replace_schema_metadata(md)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_steering_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance dict stored by ``write_steering_profile``."""
    if not Path(path).exists():
        raise RoutelabError(f"steering profile {path} not found: write it with the `steer` stage first")
    md = pq.read_schema(path).metadata or {}
    if STEER_META_KEY not in md:
        raise RoutelabError(
            f"{path} carries no steering provenance: not written by routelab.steer.write_steering_profile"
        )
    return json.loads(md[STEER_META_KEY])


# --------------------------------------------------------------------------------------
# The `steer` stage: detect on pairs, select A+/A−, evaluate the steering as a condition
# --------------------------------------------------------------------------------------


def stage_pairs(cfg: SteerParams, prompts: str | Path | None) -> pl.DataFrame:
    """The pairs the stage detects on: fairness from the prompt set, else built-in or user items."""
    if cfg.behaviour == "fairness" and cfg.pairs is None:
        if prompts is None:
            raise RoutelabError("steer.behaviour fairness needs the prompt set (--prompts) or a pairs file (steer.pairs)")
        items = fairness_items_from_prompts(prompts, cfg.split)
    elif cfg.pairs is not None:
        items = load_items(cfg.pairs, cfg.behaviour)
    else:
        items = builtin_items(cfg.behaviour)
    return build_pairs(cfg.behaviour, items, include_descriptor=cfg.include_descriptor)


def detect(lm: Any, pairs: pl.DataFrame, cfg: SteerParams, routing_path: str | Path) -> tuple[pl.DataFrame, pl.DataFrame, str | None]:
    """Extract the pairs' routing to ``routing_path``, then Δ per (layer, expert) and the A+/A− selection.

    Fewer candidates than steer.n_plus / steer.n_minus (Δ of the needed sign) is a finding, not
    an error: the available ones are taken, and the third value says what was short (else None).
    """
    spans = token_spans(pairs, lm.tokenizer)
    extract_routing(lm, list(zip(spans["prompt_id"], spans["text"])), routing_path, batch_size=lm.spec.batch_size,
                    model_name=lm.spec.path, progress=True)  # fmt: skip
    delta = steer_delta(routing_path, spans)
    sign = -1 if cfg.reverse else 1
    have_plus, have_minus = int((sign * delta["delta"] > 0).sum()), int((sign * delta["delta"] < 0).sum())
    n_plus, n_minus = min(cfg.n_plus, have_plus), min(cfg.n_minus, have_minus)
    short = None
    if (n_plus, n_minus) != (cfg.n_plus, cfg.n_minus):
        short = f"asked {cfg.n_plus} + {cfg.n_minus}, only {have_plus} experts have Δ > 0 and {have_minus} Δ < 0"
    selection = select_experts(delta, n_plus, n_minus, lm.top_k, lm.num_experts, reverse=cfg.reverse)
    return delta, selection, short


def provenance(cfg: SteerParams, model: str, n_pairs: int) -> dict[str, Any]:
    """What produced a steering profile (stored with it: profiles can lower safety as well as raise it)."""
    return {"behaviour": cfg.behaviour, "pairs": cfg.pairs or ("prompt set" if cfg.behaviour == "fairness" else "built-in"),
            "n_pairs": n_pairs, "n_plus": cfg.n_plus, "n_minus": cfg.n_minus, "reverse": cfg.reverse,
            "include_descriptor": cfg.include_descriptor, "model": model}  # fmt: skip


def prepare(run: Run) -> None:
    """Detect on the pairs with the loaded model (:func:`detect`); write Δ and the steering profile."""
    cfg: SteerParams = run.cfg
    pairs = stage_pairs(cfg, run.extra.get("prompts"))
    delta, selection, short = detect(run.lm, pairs, cfg, run.out / "pairs_routing.parquet")
    write_parquet(delta, run.out / "delta.parquet")
    prov = provenance(cfg, run.inputs.model, pairs.height // 2)
    write_steering_profile(selection, run.out / "steering.parquet", prov)
    run.state.update(delta=delta, selection=selection, provenance=prov, n_pairs=pairs.height // 2)
    if short:
        run.state["shortfall"] = short


def conditions(run: Run) -> list[Condition]:
    """The steering as one condition (after :func:`prepare`); none when detection selected no expert."""
    selection = run.state["selection"]
    if selection.height == 0:
        run.skip("steer", "SteerMoE selected no expert: " + run.state.get("shortfall", "steer.n_plus = steer.n_minus = 0"))
        return []
    return [build("steer", run.inputs.context(run.inputs.moe_layers, run.stats.seed), table=selection)]


def shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """What was detected, and the steering's Δ per benchmark."""
    cfg: SteerParams = run.cfg
    delta, selection = run.state["delta"], run.state["selection"]
    top = delta.sort("abs_delta", descending=True).head(10)
    chosen = {a: [f"L{l}/E{e}" for l, e in selection.filter(pl.col("action") == a).select("layer", "expert").iter_rows()]
              for a in ("activate", "deactivate")}  # fmt: skip
    out = {
        "behaviour": cfg.behaviour,
        "n_pairs": run.state["n_pairs"],
        "selected": chosen,
        "top_delta": [{"layer": int(l), "expert": int(e), "delta": float(d)}
                      for l, e, d in top.select("layer", "expert", "delta").iter_rows()],  # fmt: skip
        "provenance": run.state["provenance"],
        "split": run.suite.split,
        "results": results_table(outcome.comparisons),
    }
    if "shortfall" in run.state:
        out["shortfall"] = run.state["shortfall"]
    return out


STAGE = Intervention(
    name="steer",
    params=SteerParams,
    split="test",
    inputs=("prompts",),
    prepare=prepare,
    conditions=conditions,
    shape=shape,
    summary=lambda run, r: (f"{r['behaviour']}, {r['n_pairs']} pairs; deactivated {r['selected']['deactivate']}, "
                            f"activated {r['selected']['activate']}; " + delta_line(r, ["steer"])),  # fmt: skip
)
