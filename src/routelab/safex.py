"""SAFEx-style stable expert selection, fairness adaptation (docs/method.md §7).

Usage (what the `safex` stage calls)::

    from routelab.safex import SafexParams, safex_fairness
    selection, summary = safex_fairness("data/routing/olmoe.parquet", "data/prompts/olmoe.parquet",
                                        SafexParams())
    # selection: routelab.tables.SELECTION_COLUMNS + stability, one row per (layer, expert)

p_l(e|X) = A / N over the counted tokens of a prompt group X (routelab.counting); S bootstrap
resamples of the prompts; an expert is selected when it is in the top-N (N = ⌊αK⌋) of its
layer in EVERY resample (the intersection). Fairness adaptation: X = the demographic
prompts, scored against the neutral prompts of the same split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from routelab.config import check_choice
from routelab.counting import prompt_counts
from routelab.errors import RoutelabError
from routelab.tables import NEUTRAL, SELECTION_COLUMNS, load_prompts

SCORES = ("difference", "abs_difference", "rate")
SAFEX_COLUMNS = (*SELECTION_COLUMNS, "stability")  # stability: share of resamples in the top-N


@dataclass
class SafexParams:
    """The ``safex:`` section of params.yaml."""

    n_resamples: int = 100  # S bootstrap resamples of the prompts
    alpha: float = 0.1  # keep the top N = floor(alpha * K) experts per layer in each resample
    score: str = "difference"  # difference: p(e|demographic) − p(e|neutral) | abs_difference | rate
    split: str = "validation"  # prompts used: validation | test | all
    seed: int = 0  # bootstrap RNG

    def __post_init__(self) -> None:
        check_choice("safex.score", self.score, SCORES)
        check_choice("safex.split", self.split, ("validation", "test", "all"))
        if self.n_resamples < 1:
            raise RoutelabError(f"safex.n_resamples must be >= 1, found {self.n_resamples}")
        if not 0 < self.alpha <= 1:
            raise RoutelabError(f"safex.alpha must be in (0, 1], found {self.alpha}")


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
    Ties at the N-th place go to the lower expert index. Returns one row per (layer, expert),
    columns SAFEX_COLUMNS: score (full sample), selected (stability == 1), stability (share
    of resamples in the top-N).
    """
    P, L, K = counts.shape
    N = int(math.floor(alpha * K))
    if N < 1:
        raise RoutelabError(f"safex: alpha={alpha} gives N = floor(alpha * K) = 0 for K={K}: raise safex.alpha")
    check_choice("safex.score", score, SCORES)
    pos_idx = np.flatnonzero(positive)
    neg_idx = np.flatnonzero(negative) if negative is not None else np.array([], int)
    if pos_idx.size == 0:
        raise RoutelabError("safex: the prompt group X is empty")
    if score != "rate" and neg_idx.size == 0:
        raise RoutelabError(
            f"safex: safex.score '{score}' needs a non-empty contrast group (the neutral prompts); "
            "set safex.score: rate to score one group"
        )
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
    lays = np.asarray(layers)
    return pl.DataFrame(
        {
            "layer": np.repeat(lays, K).astype(np.int32),  # (L*K,)
            "expert": np.tile(np.arange(K), L).astype(np.int32),
            "score": full.ravel(),
            "selected": (in_top == n_resamples).ravel(),
            "stability": (in_top / n_resamples).ravel(),
        }
    ).select(SAFEX_COLUMNS)


def safex_fairness(
    routing_path: str | Path, prompts: pl.DataFrame | str | Path, cfg: SafexParams
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """SAFEx fairness adaptation: X = demographic prompts, contrast = neutral prompts of the split.

    Counts every real token of each prompt (no token filter). Returns ``(selection,
    summary)``: the selection table (SAFEX_COLUMNS) and its metrics/<model>/safex.json.
    """
    df = load_prompts(prompts)
    pc = prompt_counts(routing_path, df)
    in_split = np.ones(df.height, bool) if cfg.split == "all" else (df["split"] == cfg.split).to_numpy()
    present = pc.n_tokens.sum(axis=1) > 0  # (P,) prompts with counted tokens
    neutral = (df["group"] == NEUTRAL).to_numpy()
    pos, neg = in_split & present & ~neutral, in_split & present & neutral
    if not pos.any() or not neg.any():
        raise RoutelabError(
            f"{routing_path}: split '{cfg.split}' needs demographic and neutral prompts with routing "
            f"(found {int(pos.sum())} and {int(neg.sum())}): set safex.split to the extracted split"
        )
    selection = safex_select(
        pc.counts, pc.n_tokens, pos, neg, pc.layers,
        n_resamples=cfg.n_resamples, alpha=cfg.alpha, seed=cfg.seed, score=cfg.score,
    )  # fmt: skip
    chosen = selection.filter("selected")
    summary = {
        "safex_selected": chosen.height,
        "top_n": int(math.floor(cfg.alpha * int(pc.meta.num_experts))),
        "selected_experts": [f"L{l}/E{e}" for l, e in chosen.select("layer", "expert").iter_rows()],
        "n_prompts_demographic": int(pos.sum()),
        "n_prompts_neutral": int(neg.sum()),
        "settings": {"n_resamples": cfg.n_resamples, "alpha": cfg.alpha, "score": cfg.score,
                     "split": cfg.split, "seed": cfg.seed},  # fmt: skip
    }
    return selection, summary
