"""What stands above noise in an FSP profile (docs/method.md §2): the permutation nulls, and the
planted testbeds' designated experts they are read against.

Usage (what routelab.profile and the `profile` stage call)::

    from routelab.profile_null import ContextLayout, ard_permutation_test, shift_null_sums
    layout = ContextLayout.build(context, label, n_labels=G + 1)  # label 0 = neutral, 1..G groups
    null = ard_permutation_test(counts, n_tokens, layout, aggregation="mean",
                                context_matched=False, n_permutations=1000, seed=0)
    null.p, null.p_bh                                             # (L·K,) each, layer-major
    sums = shift_null_sums(counts, context, neutral, 1000, seed=0)  # routelab.profile: its JSD
    designated = load_designated("data/models/routed")            # None without plant.json

Both nulls relabel within context. A context is a neutral prompt and its demographic variants
(``context_id`` of the prompts table); under H0 (the descriptor does not change routing) its
members are exchangeable, so every permutation of the labels among them is as likely as the
observed one. Everything is recomputed from the per-prompt counts (P, L, K) of
routelab.counting, as a sparse relabelling matrix times the (P × L·K) count matrix.

One context in the layout (slots padded to the largest context, S)::

    slot        0          1       2       3   …  S-1
    members     p_neutral  p_a     p_b     -1      -1     prompt index, -1 = padding
    labels      0          a       b       -1      -1     0 = neutral, 1..G = group

A relabelling draws, per context, a permutation τ of its real slots: the label of slot s moves
to the prompt of slot τ(s). Its relabelling matrix W (G+1 × P) holds one 1 per prompt, in the
row of the prompt's new label, so W @ counts gives every label's sums at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse, stats

from routelab.errors import RoutelabError

PLANT_FILE = "plant.json"  # in a planted testbed's model folder: {"designated": {"<layer>": [expert, ...]}}
# The per-expert null draws from its own stream: adding it left the routing-shift test's draws
# (default_rng(seed)), and so its reported numbers, unchanged.
_ARD_STREAM = 1
# Relabellings per sparse product: the (b·(G+1), L·K) float32 result stays a few MB.
_CHUNK = 32
# A null value equal to the observed one up to float rounding counts as "≥" (ties are common:
# an expert whose rate no relabelling can change has T* = T = 0, so p = 1).
_TIE_ATOL = 1e-12


# --------------------------------------------------------------------------------------
# Contexts and relabellings
# --------------------------------------------------------------------------------------


@dataclass
class ContextLayout:
    """Prompts grouped by context, padded to the largest context (see the module diagram)."""

    members: np.ndarray  # (C, S) prompt index of each slot, -1 = padding
    labels: np.ndarray  # (C, S) label of each slot: 0 = neutral, 1..G = group, -1 = padding
    n_labels: int  # G + 1

    @classmethod
    def build(cls, context: np.ndarray, label: np.ndarray, n_labels: int) -> ContextLayout:
        """context (P,) any ids; label (P,) ints in 0..n_labels-1 (0 = neutral)."""
        _, inv = np.unique(context, return_inverse=True)  # (P,) context index
        order = np.argsort(inv, kind="stable")  # (P,) the members of each context contiguous
        size = np.bincount(inv)  # (C,)
        slot = np.arange(order.size) - np.repeat(np.cumsum(size) - size, size)  # (P,) slot in its context
        members = np.full((size.size, int(size.max())), -1, np.int64)  # (C, S)
        members[inv[order], slot] = order
        labels = np.where(members >= 0, np.asarray(label)[members], -1)  # (C, S); padding's [-1] is masked
        return cls(members=members, labels=labels, n_labels=int(n_labels))

    @property
    def valid(self) -> np.ndarray:
        """(C, S) bool: the slot holds a prompt."""
        return self.members >= 0

    @property
    def n_prompts(self) -> int:
        return int(self.valid.sum())

    def draw(self, rng: np.random.Generator, b: int) -> np.ndarray:
        """(b, C, S) τ: a uniform permutation of each context's real slots (padding stays last)."""
        keys = rng.random((b, *self.members.shape))  # (b, C, S)
        keys[:, ~self.valid] = 2.0  # padding sorts after every real slot
        return np.argsort(keys, axis=-1, kind="stable")  # stable: one order for the tied padding on every CPU

    def identity(self) -> np.ndarray:
        """(1, C, S) τ of the observed labelling."""
        return np.broadcast_to(np.arange(self.members.shape[1]), (1, *self.members.shape)).copy()

    def matched_pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The context-matched baseline as (group g-1, neutral slot, m_gc) triples, sorted by
        group: the baseline of group g weights each neutral prompt of context c by m_gc, the
        number of g's prompts in c (docs/method.md §2). The slot is an index among the valid
        slots (row-major), i.e. the prompt the neutral label sits on. A relabelling moves the
        neutral label within c; m_gc does not change. Every context holding a demographic
        prompt needs a neutral prompt."""
        C, S = self.labels.shape
        G = self.n_labels - 1
        m = np.zeros((C, G + 1), np.int64)  # (C, G+1) label counts per context
        np.add.at(m, (np.nonzero(self.valid)[0], self.labels[self.valid]), 1)
        orphan = (m[:, 1:].sum(axis=1) > 0) & (m[:, 0] == 0)
        if orphan.any():
            raise RoutelabError(
                f"profile.baseline: context_matched: {int(orphan.sum())} contexts hold demographic "
                "prompts but no neutral prompt with counted tokens: extract routing for whole "
                "contexts (prompt_id → context_id), or set profile.baseline: pooled"
            )
        valid_index = np.cumsum(self.valid.ravel()).reshape(C, S) - 1  # (C, S) index among valid slots
        c_n, s_n = np.nonzero(self.labels == 0)  # (n_neutral,) neutral slots
        g, which = np.nonzero(m[c_n, 1:].T)  # (nnz,) group index, neutral-slot index; sorted by g
        return g, valid_index[c_n[which], s_n[which]], m[c_n[which], g + 1].astype(np.float64)

    def matched_weights(self) -> sparse.csr_matrix:
        """(G, P) the context-matched baseline weights of the observed labels (see
        ``matched_pattern``): weights @ counts gives each group's baseline counts."""
        g, slot, weight = self.matched_pattern()
        prompt = self.members[self.valid][slot]  # (nnz,)
        return sparse.csr_matrix((weight, (g, prompt)), shape=(self.n_labels - 1, self.n_prompts))


# --------------------------------------------------------------------------------------
# Per-(layer, expert) ARD null
# --------------------------------------------------------------------------------------


def permutation_p(n_ge: np.ndarray | int, n_permutations: int) -> np.ndarray:
    """p = (1 + #{T* ≥ T}) / (1 + B): the observed labelling counts as one draw of the null,
    so p is never 0 (its floor is 1/(1 + B))."""
    return (1.0 + np.asarray(n_ge, dtype=np.float64)) / (1.0 + n_permutations)


class ArdStatistic:
    """The aggregated ARD of relabellings τ (b, C, S) → (b, L·K), layer-major.

    counts (P, L, K), n_tokens (P, L): per-prompt counts, rows in the layout's prompt order.
    ARD(e, g) = |rate_g(e) − baseline_g(e)| with the pooled neutral rate as every group's
    baseline, or the context-matched one; aggregated over groups by ``aggregation`` (mean |
    max), exactly as the profile's ``ard`` column.
    """

    def __init__(
        self, counts: np.ndarray, n_tokens: np.ndarray, layout: ContextLayout, aggregation: str, context_matched: bool
    ) -> None:
        P, L, K = counts.shape
        self.layout, self.shape, self.aggregation = layout, (L, K), aggregation
        self.matched = layout.matched_pattern() if context_matched else None
        max_weight = self.matched[2].max(initial=1.0) if self.matched is not None else 1.0
        # float32 is exact for integer sums < 2^24 and halves the memory the product streams;
        # a token counts at most once per expert, so the token sums bound every count sum
        largest = max(n_tokens.sum(axis=0).max(initial=0), counts.reshape(P, -1).sum(axis=0).max(initial=0))
        exact32 = largest * max_weight < 2**24
        dtype = np.float32 if exact32 else np.float64
        self.counts = counts.reshape(P, L * K).astype(dtype)  # (P, L·K)
        self.n_tokens = n_tokens.astype(dtype)  # (P, L)

    def _sums(self, W: sparse.csc_matrix, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, L, K) count sums and (rows, L) token sums of a relabelling matrix W."""
        L, K = self.shape
        s = np.asarray(W @ self.counts, dtype=np.float64).reshape(rows, L, K)
        t = np.asarray(W @ self.n_tokens, dtype=np.float64).reshape(rows, L)
        # A label with no tokens cannot occur when every prompt has counted tokens; max(·, 1)
        # keeps a degenerate relabelling finite (its count sums are 0 as well).
        return s, np.maximum(t, 1.0)

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        layout, (L, K) = self.layout, self.shape
        b, n_lab, P = tau.shape[0], layout.n_labels, layout.n_prompts
        G = n_lab - 1
        valid = layout.valid
        moved_to = np.take_along_axis(np.broadcast_to(layout.members, tau.shape), tau, axis=-1)[:, valid]  # (b, P)
        new_label = np.empty((b, P), np.int64)
        np.put_along_axis(new_label, moved_to, np.broadcast_to(layout.labels[valid], (b, P)), axis=1)  # (b, P)
        # Wᵀ as CSR (P × b·(G+1)), row p: one entry per relabelling, at its new label. Its
        # transpose is CSC, and CSC @ dense streams the count matrix once per chunk (about 4x
        # faster than CSR @ dense, which gathers count rows at random).
        col = (new_label.T + np.arange(b) * n_lab).ravel()  # (P·b,) row of W: relabelling · (G+1) + label
        WT = sparse.csr_matrix((np.ones(P * b, self.counts.dtype), col, np.arange(0, P * b + 1, b)), shape=(P, b * n_lab))
        s, t = self._sums(WT.T, b * n_lab)
        rate = (s / t[..., None]).reshape(b, n_lab, L, K)  # (b, G+1, L, K)
        if self.matched is None:
            base = rate[:, :1]  # (b, 1, L, K) the pooled neutral rate
        else:  # each group's matched neutral prompts: wherever the neutral label moved
            g, slot, weight = self.matched
            indptr = np.concatenate([[0], np.cumsum(np.tile(np.bincount(g, minlength=G), b))])
            M = sparse.csr_matrix(
                (np.tile(weight, b).astype(self.counts.dtype), moved_to[:, slot].ravel(), indptr), shape=(b * G, P)
            )  # fmt: skip
            s_m, t_m = self._sums(M.tocsc(), b * G)  # tocsc: linear time; CSC @ dense (above)
            base = (s_m / t_m[..., None]).reshape(b, G, L, K)  # (b, G, L, K)
        ard = np.abs(rate[:, 1:] - base)  # (b, G, L, K)
        agg = ard.mean(axis=1) if self.aggregation == "mean" else ard.max(axis=1)  # (b, L, K)
        return agg.reshape(b, L * K)


@dataclass
class ArdNull:
    """The per-expert ARD permutation test, layer-major like the profile rows."""

    observed: np.ndarray  # (L·K,) aggregated ARD of the observed labels (= the `ard` column)
    p: np.ndarray  # (L·K,) (1 + #{T* ≥ T}) / (1 + B)
    p_bh: np.ndarray  # (L·K,) Benjamini–Hochberg over all L·K experts


def ard_permutation_test(
    counts: np.ndarray,
    n_tokens: np.ndarray,
    layout: ContextLayout,
    *,
    aggregation: str,
    context_matched: bool,
    n_permutations: int,
    seed: int,
) -> ArdNull:
    """Per-(layer, expert) test of the aggregated ARD against relabelling within context.

    counts (P, L, K), n_tokens (P, L): per-prompt counts, rows in the layout's prompt order.
    Statistic T(l, e) = the aggregated raw ARD, the profile's ``ard`` column: raw, not φ,
    because φ is min-max normalised per layer (every layer's top expert scores 1, even in pure
    noise) and ARD is the paper's strongest component. Null: B uniform relabellings within
    context; p = (1 + #{T* ≥ T})/(1 + B) per expert; Benjamini–Hochberg over all L·K experts
    (scipy.stats.false_discovery_control). Cost per relabelling: one sparse (G+1 × P) ·
    (P × L·K) product (two with the context-matched baseline).
    """
    if counts.shape[0] != layout.n_prompts:
        raise RoutelabError(f"ARD null: {counts.shape[0]} prompts of counts, {layout.n_prompts} in the context layout")
    statistic = ArdStatistic(counts, n_tokens, layout, aggregation, context_matched)
    observed = statistic(layout.identity())[0]  # (L·K,)
    n_ge = np.zeros(observed.size, np.int64)
    rng = np.random.default_rng([seed, _ARD_STREAM])
    for b0 in range(0, n_permutations, _CHUNK):
        null = statistic(layout.draw(rng, min(_CHUNK, n_permutations - b0)))  # (b, L·K)
        n_ge += (null >= observed - _TIE_ATOL).sum(axis=0)
    p = permutation_p(n_ge, n_permutations)
    return ArdNull(observed=observed, p=p, p_bh=stats.false_discovery_control(p, method="bh"))


# --------------------------------------------------------------------------------------
# Layer-level routing shift: the relabelled neutral sums (routelab.profile computes the JSD)
# --------------------------------------------------------------------------------------


@dataclass
class ShiftSums:
    """Pooled neutral sums of the observed labels and of each relabelling (layer-major L·K)."""

    neutral: np.ndarray  # (L·K,) observed neutral sums
    total: np.ndarray  # (L·K,) neutral + demographic sums (fixed under relabelling)
    null_neutral: np.ndarray  # (B, L·K) neutral sums of each relabelling
    n_contexts: int  # contexts tested


def shift_null_sums(
    counts: np.ndarray, context: np.ndarray, neutral: np.ndarray, n_permutations: int, seed: int
) -> ShiftSums:
    """Neutral/demographic label shuffle within contexts, for the routing-shift test.

    counts (P, L, K): per-prompt activation counts; context (P,) context ids; neutral (P,)
    bool. Only the contexts holding exactly one neutral prompt and at least one variant take
    part. Null: in each context the "neutral" label goes to a uniformly drawn member (the
    others are demographic). Cost: per permutation one sparse (1 × P) · (P × L·K) product
    over n_contexts rows.
    """
    ctx_codes, ctx_inv = np.unique(context, return_inverse=True)
    n_neutral = np.bincount(ctx_inv, weights=neutral.astype(float), minlength=ctx_codes.size)
    size = np.bincount(ctx_inv, minlength=ctx_codes.size)
    ok_ctx = (n_neutral == 1) & (size >= 2)
    keep = ok_ctx[ctx_inv]
    P, L, K = counts.shape
    C = counts[keep].reshape(-1, L * K).astype(np.float32)  # (P', L*K); exact for counts < 2^24
    inv = np.unique(ctx_inv[keep], return_inverse=True)[1]  # contexts renumbered 0..n_ctx-1
    n_ctx = int(ok_ctx.sum())
    if n_ctx == 0:
        raise RoutelabError(
            "permutation test: no context holds exactly one neutral prompt and a demographic "
            "variant; check that the routing log covers whole contexts (prompt_id → context_id)"
        )
    total = C.sum(axis=0, dtype=np.float64)  # (L*K,)
    s_n = C[neutral[keep]].sum(axis=0, dtype=np.float64)  # (L*K,)
    order = np.argsort(inv, kind="stable")  # members of each context contiguous
    C, inv = C[order], inv[order]
    start = np.searchsorted(inv, np.arange(n_ctx))  # (n_ctx,) first member row
    members = np.bincount(inv, minlength=n_ctx)  # (n_ctx,)
    rng = np.random.default_rng(seed)
    null = np.empty((n_permutations, L * K))  # (B, L*K)
    chunk = 64
    for b0 in range(0, n_permutations, chunk):
        b = min(chunk, n_permutations - b0)
        pick = start[None, :] + (rng.random((b, n_ctx)) * members[None, :]).astype(np.int64)  # (b, n_ctx)
        W = sparse.csr_matrix(
            (np.ones(b * n_ctx, np.float32), pick.ravel(), np.arange(0, b * n_ctx + 1, n_ctx)),
            shape=(b, C.shape[0]),
        )
        null[b0 : b0 + b] = W.tocsc() @ C  # (b, L*K) neutral sums; CSC streams C (ArdStatistic)
    return ShiftSums(neutral=s_n, total=total, null_neutral=null, n_contexts=n_ctx)


# --------------------------------------------------------------------------------------
# Planted testbeds: the designated experts (ground truth)
# --------------------------------------------------------------------------------------


def load_designated(model_dir: str | Path | None) -> dict[int, list[int]] | None:
    """The designated experts of a planted testbed, from ``<model_dir>/plant.json``
    (``{"designated": {"<layer>": [expert, ...]}}``, layers as in the routing log); None
    when no model folder is given, it holds no plant.json, or the plant has no designated
    experts (``nonrouted``: planted outside the routing path)."""
    if model_dir is None:
        return None
    if not Path(model_dir).is_dir():
        raise RoutelabError(f"--model-dir {model_dir}: not a folder; give the model's folder (data/models/<name>)")
    path = Path(model_dir) / PLANT_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())["designated"]
        out = {int(layer): sorted({int(e) for e in experts}) for layer, experts in raw.items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RoutelabError(
            f"{path}: not a plant file ({type(exc).__name__}: {exc}); expected "
            '{"designated": {"<layer>": [expert, ...]}}: rebuild the model folder with `testbed_train`'
        ) from None
    if not out:  # a plant outside the routing path (nonrouted): no designated experts
        return None
    if not all(out.values()):
        raise RoutelabError(f"{path}: 'designated' names a layer without experts; rebuild the model folder with `testbed_plant`")
    return out


def designated_report(profile: pl.DataFrame, designated: dict[int, list[int]], n_experts: int) -> dict[str, Any]:
    """Where the designated experts sit in a profile (the `profile` stage's table).

    Per expert (key ``L<layer>_E<expert>``): its within-layer φ rank (1 = top; ties broken by
    raw ARD, as ``top_phi``), φ, ``p_bh`` and ``significant``. Overall: whether every
    designated layer's designated experts hold its top ranks, and how many BH-significant
    experts lie inside and outside the designated set (None when the null was skipped).
    """
    layers = set(profile["layer"].to_list())
    bad = {l: e for l, e in designated.items() if l not in layers or min(e) < 0 or max(e) >= n_experts}
    if bad:
        raise RoutelabError(
            f"{PLANT_FILE}: designated {bad} outside the routing log's MoE layers {sorted(layers)} "
            f"or experts 0..{n_experts - 1}: give --model-dir the folder of the model that was profiled"
        )
    is_des = pl.any_horizontal([(pl.col("layer") == l) & pl.col("expert").is_in(e) for l, e in designated.items()])
    ranked = profile.sort("layer", "phi", "ard", descending=[False, True, True], maintain_order=True).with_columns(
        rank=pl.int_range(1, pl.len() + 1).over("layer"), designated=is_des
    )
    rows = ranked.filter("designated").sort("layer", "expert")
    experts = {
        f"L{r['layer']}_E{r['expert']}": {"rank": r["rank"], "phi": r["phi"], "p_bh": r["ard_p_bh"],
                                          "significant": r["significant"]}
        for r in rows.iter_rows(named=True)
    }  # fmt: skip
    tested = profile["significant"].null_count() == 0
    return {
        "experts": experts,
        "n_designated": rows.height,
        "all_top_ranked": all(rows.filter(pl.col("layer") == l)["rank"].max() == len(e) for l, e in designated.items()),
        "n_significant": int(rows["significant"].sum()) if tested else None,
        "n_significant_outside": int(ranked.filter(~pl.col("designated"))["significant"].sum()) if tested else None,
    }
