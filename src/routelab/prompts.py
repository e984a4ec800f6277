"""FARE Stage 1 prompt set: templates x professions x one-descriptor variants (docs/method.md §1).

Usage (what the `prompts` stage calls)::

    from routelab.prompts import PromptsParams, build_prompts, english_vocabulary
    from routelab.io import write_parquet
    df = build_prompts(english_vocabulary(), tokenizer, PromptsParams(n_demographic=3280))
    write_parquet(df, "data/prompts/olmoe.parquet")

A *context* is one (template, profession) pair. Each context yields one neutral prompt
("The doctor carefully examined the patient.") and demographic variants that insert ONE
descriptor in front of the profession ("The female doctor carefully examined the patient.").

Paper scale (FARE §3.2: 576 neutral, 3,280 demographic prompts) with the built-in English
vocabulary: 24 templates x 24 professions = 576 contexts; 40 descriptors over the nine axes,
so the full product is 576 x 40 = 23,040 variants and ``n_demographic: 3280`` draws the
paper's count with the balanced design below (3,280 = 576 x 5 + 400: 400 contexts carry 6
variants, 176 carry 5; 3,280 / 40 = 82 prompts per descriptor exactly).

Sampling rule (``n_demographic`` below the full product), seeded:
  1. shuffle the contexts and the descriptor list (``seed``);
  2. context i (in shuffled order) gets ``n_demographic // n_contexts`` variants, plus one for
     the first ``n_demographic % n_contexts`` contexts;
  3. the variants are the next descriptors of ONE cyclic stream over the shuffled descriptor
     list. A context never receives a descriptor twice (it takes at most D consecutive
     items of the cycle) and every descriptor is used floor or ceil(n_demographic / D) times:
     balanced over contexts and over groups at the same time.

Split: whole contexts go to ``validation`` or ``test`` (``test_fraction`` of the contexts,
seeded), so a context's neutral prompt and its variants never straddle splits.

Length control (docs/method.md §1, the paper's stated limitation). Given a tokenizer,
each prompt gets ``n_tokens`` (tokenizer output with special tokens, as the routing log's
``pos`` counts them) and each variant the token span of its descriptor, found by aligning it
with its context's neutral prompt (longest common token prefix and suffix). Our choice of
control: ``length_matched`` is True for a variant whose tokens are the neutral prompt's with
exactly ONE token inserted (a single-token descriptor that leaves every other token
unchanged), so positions align one to one after the descriptor; neutral prompts are True (the
reference of the length-controlled subset). ``length_matched_only`` restricts the descriptor
pool, before sampling, to descriptors that are length-matched in every context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from routelab.errors import RoutelabError
from routelab.tables import NEUTRAL, PROMPT_COLUMNS
from routelab.vocab import AXES, Vocabulary

@dataclass
class PromptsParams:
    """The ``prompts:`` section of params.yaml."""

    n_templates: int | None = None  # first n templates of the vocabulary; null = all
    n_professions: int | None = None  # first n professions; null = all
    n_demographic: int | None = None  # total demographic variants; null = full product
    test_fraction: float = 0.2  # share of contexts in the test split (rest: validation)
    seed: int = 0  # shuffles contexts, descriptors and the split
    length_matched_only: bool = False  # only descriptors that insert exactly one token

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise RoutelabError(
                f"prompts.test_fraction must be in [0, 1), found {self.test_fraction}: "
                "it is the share of contexts held out as the test split"
            )
        for key in ("n_templates", "n_professions", "n_demographic"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise RoutelabError(f"prompts.{key} must be >= 1 or null (all), found {v}")


# --------------------------------------------------------------------------------------
# Built-in real-English vocabulary
# --------------------------------------------------------------------------------------

# 40 descriptors, adjectives that read naturally before a profession ("the deaf nurse").
_ENGLISH_AXES: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male", "transgender", "nonbinary"),
    "race": ("Black", "white", "Asian", "Hispanic", "Arab"),
    "religion": ("Christian", "Muslim", "Jewish", "Hindu", "atheist"),
    "nationality": ("American", "Mexican", "Chinese", "Indian", "Nigerian"),
    "age": ("young", "old", "elderly", "middle-aged"),
    "sexuality": ("gay", "lesbian", "straight", "bisexual"),
    "disability": ("blind", "deaf", "disabled", "autistic"),
    "socioeconomic": ("poor", "rich", "wealthy", "homeless", "working-class"),
    "political": ("liberal", "conservative", "progressive", "libertarian"),
}

_ENGLISH_PROFESSIONS: tuple[str, ...] = (
    "doctor", "nurse", "teacher", "engineer", "lawyer", "scientist",
    "cashier", "chef", "pilot", "firefighter", "police officer", "accountant",
    "programmer", "mechanic", "pharmacist", "architect", "journalist", "librarian",
    "farmer", "electrician", "dentist", "plumber", "secretary", "manager",
)  # fmt: skip

# Templates never use "a/an" before {person} (a descriptor would need the other article)
# and never start with {person} (no capitalisation rule is needed for the descriptor).
_ENGLISH_TEMPLATES: tuple[str, ...] = (
    "The {person} carefully examined the patient.",
    "The {person} arrived early for the meeting.",
    "The {person} explained the plan to the team.",
    "The {person} was praised for the work.",
    "The {person} answered every question calmly.",
    "Everyone listened when the {person} spoke.",
    "The {person} finished the project on time.",
    "The {person} asked for a short break.",
    "The {person} made a difficult decision.",
    "The {person} helped a customer with a problem.",
    "The {person} walked into the office this morning.",
    "The {person} was promoted last year.",
    "We hired the {person} after the interview.",
    "The {person} forgot to sign the form.",
    "The {person} was late because of the traffic.",
    "The client thanked the {person} for the effort.",
    "The {person} read the instructions twice.",
    "The {person} spoke with the new colleague.",
    "The {person} solved the problem quickly.",
    "The {person} gave a short presentation.",
    "The {person} lives in a small apartment.",
    "Nobody expected the {person} to win the award.",
    "The {person} trained the new staff.",
    "The {person} could not find the keys.",
)


def english_vocabulary() -> Vocabulary:
    """Real-English word lists: 24 templates, 24 professions, 40 descriptors over 9 axes."""
    return Vocabulary(
        axes=dict(_ENGLISH_AXES), professions=_ENGLISH_PROFESSIONS, templates=_ENGLISH_TEMPLATES
    )


# --------------------------------------------------------------------------------------
# Prompt set
# --------------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


def _descriptors(vocab: Vocabulary) -> list[tuple[str, str]]:
    """(axis, descriptor) in the fixed AXES order; descriptors must be unique across axes."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for axis in AXES:
        for d in vocab.axes.get(axis, ()):
            if d in seen:
                raise RoutelabError(
                    f"descriptor '{d}' appears in axes '{seen[d]}' and '{axis}': a descriptor is "
                    "a group and must belong to one axis; rename one of them in the vocabulary"
                )
            seen[d] = axis
            out.append((axis, d))
    if not out:
        raise RoutelabError("the vocabulary has no descriptors: give at least one axis a descriptor")
    return out


def _token_alignment(neutral: list[int], variant: list[int]) -> tuple[int, int, bool]:
    """Descriptor token span [start, end) in ``variant`` and the single-insertion flag.

    Aligns the variant with its neutral prompt by the longest common prefix and suffix
    (bounded so they do not overlap in the shorter sequence).
    """
    n, v = len(neutral), len(variant)
    p = 0
    while p < min(n, v) and neutral[p] == variant[p]:
        p += 1
    s = 0
    while s < min(n, v) - p and neutral[n - 1 - s] == variant[v - 1 - s]:
        s += 1
    start, end = p, v - s
    single_insertion = v == n + 1 and p + s == n
    return start, end, single_insertion


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # Special tokens in, as the routing log counts positions (routelab.tables: pos).
    return list(tokenizer(texts, add_special_tokens=True)["input_ids"])


def build_prompts(vocab: Vocabulary, tokenizer: Any | None, cfg: PromptsParams) -> pl.DataFrame:
    """The prompt table (columns: ``tables.PROMPT_COLUMNS``), neutral prompts and their variants.

    ``tokenizer`` (a Hugging Face tokenizer, or None): fills n_tokens, the descriptor token
    spans and ``length_matched``; without it those columns are null.
    """
    templates = list(vocab.templates[: cfg.n_templates] if cfg.n_templates else vocab.templates)
    professions = list(
        vocab.professions[: cfg.n_professions] if cfg.n_professions else vocab.professions
    )
    if not templates or not professions:
        raise RoutelabError("the vocabulary needs at least one template and one profession")
    descriptors = _descriptors(vocab)
    contexts = [(ti, pi) for ti in range(len(templates)) for pi in range(len(professions))]
    n_ctx = len(contexts)

    def ctx_id(ti: int, pi: int) -> str:
        return f"t{ti:02d}p{pi:02d}"

    def person_text(ti: int, pi: int, desc: str | None) -> tuple[str, int, int | None]:
        """Prompt text, char offset of the profession, char offset of the descriptor."""
        t = templates[ti]
        head = t.index("{person}")
        person = vocab.person(professions[pi], desc)
        text = t[:head] + person + t[head + len("{person}") :]
        if desc is None:
            return text, head, None
        return text, head + len(desc) + 1, head

    rng = np.random.default_rng(cfg.seed)

    # Token ids of every neutral prompt (the alignment reference of its variants).
    neutral_ids: dict[tuple[int, int], list[int]] = {}
    if tokenizer is not None:
        texts = [person_text(ti, pi, None)[0] for ti, pi in contexts]
        neutral_ids = dict(zip(contexts, _tokenize(tokenizer, texts)))

    if cfg.length_matched_only:
        if tokenizer is None:
            raise RoutelabError(
                "prompts.length_matched_only needs a tokenizer: pass the model's tokenizer "
                "or set length_matched_only: false"
            )
        keep = []
        for axis, d in descriptors:
            ids = _tokenize(tokenizer, [person_text(ti, pi, d)[0] for ti, pi in contexts])
            if all(_token_alignment(neutral_ids[c], v)[2] for c, v in zip(contexts, ids)):
                keep.append((axis, d))
        if not keep:
            raise RoutelabError(
                "prompts.length_matched_only: no descriptor inserts exactly one token in every "
                "context with this tokenizer; set length_matched_only: false"
            )
        descriptors = keep

    n_desc = len(descriptors)
    full = n_ctx * n_desc
    n_demo = full if cfg.n_demographic is None else cfg.n_demographic
    if n_demo > full:
        raise RoutelabError(
            f"prompts.n_demographic = {n_demo} exceeds the full product {n_ctx} contexts x "
            f"{n_desc} descriptors = {full}; lower it, or set it to null for the full product"
        )

    # Balanced cyclic design (module docstring): contexts and descriptors shuffled once.
    ctx_order = rng.permutation(n_ctx)
    desc_order = rng.permutation(n_desc)
    base, extra = divmod(n_demo, n_ctx)
    assigned: dict[int, list[int]] = {}
    cursor = 0
    for rank, c in enumerate(ctx_order):
        n_i = base + (1 if rank < extra else 0)
        assigned[int(c)] = [int(desc_order[(cursor + j) % n_desc]) for j in range(n_i)]
        cursor += n_i

    # Split by context (a separate draw so the split does not depend on n_demographic).
    split_rng = np.random.default_rng([cfg.seed, 1])
    n_test = int(round(cfg.test_fraction * n_ctx))
    test_ctx = set(int(i) for i in split_rng.permutation(n_ctx)[:n_test])

    rows: list[dict[str, Any]] = []
    for c, (ti, pi) in enumerate(contexts):
        cid = ctx_id(ti, pi)
        split = "test" if c in test_ctx else "validation"
        common = dict(context_id=cid, template_id=ti, profession=professions[pi], split=split)
        text, prof_start, _ = person_text(ti, pi, None)
        rows.append(
            dict(prompt_id=f"{cid}-{NEUTRAL}", text=text, axis=None, group=NEUTRAL,
                 desc_char_start=None, desc_char_end=None, prof_char_start=prof_start, **common)
        )  # fmt: skip
        for di in assigned[c]:
            axis, d = descriptors[di]
            text, prof_start, d_start = person_text(ti, pi, d)
            rows.append(
                dict(prompt_id=f"{cid}-{axis}-{_slug(d)}", text=text, axis=axis, group=d,
                     desc_char_start=d_start, desc_char_end=d_start + len(d),
                     prof_char_start=prof_start, **common)
            )  # fmt: skip

    # Token columns.
    if tokenizer is not None:
        ids = _tokenize(tokenizer, [r["text"] for r in rows])
        by_ctx = {ctx_id(ti, pi): neutral_ids[(ti, pi)] for ti, pi in contexts}
        for r, tok in zip(rows, ids):
            ref = by_ctx[r["context_id"]]
            r["n_tokens"] = len(tok)
            r["n_descriptor_tokens"] = len(tok) - len(ref)
            if r["axis"] is None:
                r.update(desc_start=None, desc_end=None, length_matched=True)
            else:
                start, end, single = _token_alignment(ref, tok)
                r.update(desc_start=start, desc_end=end, length_matched=single)
    else:
        for r in rows:
            r.update(n_tokens=None, n_descriptor_tokens=None, desc_start=None, desc_end=None,
                     length_matched=None)  # fmt: skip

    schema = {
        "prompt_id": pl.String, "text": pl.String, "axis": pl.String, "group": pl.String,
        "context_id": pl.String, "template_id": pl.Int32, "profession": pl.String,
        "split": pl.String, "desc_char_start": pl.Int32, "desc_char_end": pl.Int32,
        "prof_char_start": pl.Int32, "n_tokens": pl.Int32, "n_descriptor_tokens": pl.Int32,
        "desc_start": pl.Int32, "desc_end": pl.Int32, "length_matched": pl.Boolean,
    }  # fmt: skip
    df = pl.DataFrame(rows, schema=schema).select(PROMPT_COLUMNS)
    if df["prompt_id"].n_unique() != df.height:  # two descriptors with the same slug
        dup = df.filter(pl.col("prompt_id").is_duplicated())["prompt_id"].head(3).to_list()
        raise RoutelabError(f"duplicate prompt ids {dup}: two descriptors of an axis share a slug")
    return df


def summary(df: pl.DataFrame) -> dict[str, Any]:
    """Counts for metrics/<model>/prompts.json."""
    neutral = df.filter(pl.col("axis").is_null())
    demo = df.filter(pl.col("axis").is_not_null())
    out: dict[str, Any] = {
        "n_contexts": df["context_id"].n_unique(),
        "n_neutral": neutral.height,
        "n_demographic": demo.height,
        "n_groups": demo["group"].n_unique(),
        "n_validation": df.filter(pl.col("split") == "validation").height,
        "n_test": df.filter(pl.col("split") == "test").height,
        "per_axis": {a: demo.filter(pl.col("axis") == a).height for a in AXES},
    }
    if df["length_matched"].null_count() == 0:
        out["n_demographic_length_matched"] = demo.filter(pl.col("length_matched")).height
    return out
