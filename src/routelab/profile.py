"""FARE Stage 2: Fairness Sensitivity Profiling (FSP) from a routing log (docs/method.md §2).

Usage (what the `profile` stage calls)::

    from routelab.profile import ProfileParams, compute_profile
    from routelab.profile_null import load_designated
    from routelab.io import write_parquet
    profile, layer_axis, descriptors = compute_profile(
        "data/routing/olmoe.parquet", "data/prompts/olmoe.parquet", ProfileParams(),
        designated=load_designated("data/models/olmoe"))    # None: no plant.json there
    write_parquet(profile, "data/profiles/olmoe.parquet")   # read by `routelab extract --profile`

Definitions (all per MoE layer l; "tokens" = the counted tokens of a prompt set, see below):
  A_X(e)  tokens of prompt set X with expert e in the top-k;  N_X = tokens of X.
  P(e|g) = A_g(e) / N_g           activation rate on prompts of group g (a descriptor)
  P(e)   = A_n(e) / N_n           activation rate on NEUTRAL prompts
  D_X(e) = A_X(e) / Σ_e' A_X(e')  routing distribution over experts (= P(e|X) / k)
  P(g)   = N_g / N_all            share of group g among all counted tokens (neutral + groups)
  ARD(e,g) = |P(e|g) − P(e)|                                   raw rates, no smoothing
  JSD(g)   = ½ KL(D_g‖M) + ½ KL(D_n‖M), M = ½(D_g + D_n)       log base 2: bits, in [0, 1]
             (= scipy.spatial.distance.jensenshannon(D_g, D_n, base=2) ** 2)
  PMI(g,e) = log2( P̃(e|g) / (P̃(e) · P(g)) ), P̃ = (A + α) / (N + 2α)  (additive smoothing
             of the Bernoulli rate; α = ``smoothing`` > 0, so no zero count gives ±inf)
  H(D)     = −Σ_e D(e) log2 D(e)  (0·log 0 = 0); the entropy metric is the demographic
             entropy shift |H(D_g) − H(D_n)|

Choices (params section ``profile:``):
  * Tokens: every real token by default (pads are never rows; the descriptor tokens of a
    variant count, as in the paper). ``skip_first_token`` drops position 0 (BOS, or a first
    word that no descriptor can influence under causal attention); ``exclude_descriptor``
    drops the descriptor's token span (needs the prompts table's desc_start/desc_end): the
    length-controlled measure of how the descriptor shifts the routing of the shared tokens.
    Counting is routelab.counting's one pass over the log.
  * Aggregation over groups: ``mean`` (default, unweighted over groups) or ``max``.
  * PMI keeps the paper's −log2 P(g) term. With mean aggregation it is a per-layer constant,
    which the per-layer min-max normalisation removes: m̂_PMI then equals the normalised mean
    log relative risk log2(P̃(e|g)/P̃(e)). PMI is signed (avoided experts score low).
  * Layer-level metrics (``layer_metrics``): ``decompose`` (default) splits JSD into its
    per-expert terms ½ D_g log2(D_g/M) + ½ D_n log2(D_n/M) (each ≥ 0, they sum to the layer's
    JSD) and entropy into |h_e(D_g) − h_e(D_n)| with h_e(D) = −D(e) log2 D(e). ``broadcast``
    gives every expert its layer's value; per-layer min-max normalisation then maps the
    column to 0. That is not a loss: ARR subtracts λφ_l inside a softmax, and a constant
    shift within a layer cannot change routing (docs/method.md §3).
  * Normalisation: per layer over experts, (x − min)/(max − min); a constant column → 0.
    It gives every layer a "top" expert, even a layer of pure noise: φ says nothing about
    significance, the per-expert test below does.
  * φ(e,l) = Σ_i w_i m̂_i(e,l), weights from params.
  * Baseline (``baseline``): ``pooled`` (default, the paper's) compares each group with the
    rate over ALL neutral prompts; ``context_matched`` compares group g with the neutral
    prompts of g's own contexts, each weighted by how many prompts g has in that context
    (routelab.profile_null.ContextLayout.matched_pattern). It applies to ARD, JSD, PMI and
    entropy; the descriptive columns (p_neutral, layer_jsd, the layer-axis table) stay pooled.
  * Significance per (layer, expert) (routelab.profile_null.ard_permutation_test): the raw
    aggregated ARD (not φ, which is min-max normalised per layer; ARD is the paper's
    strongest component) against B = ``n_permutations`` relabellings within context;
    p = (1 + #{T* ≥ T})/(1 + B), Benjamini–Hochberg over all L·K experts, ``significant``
    = p_bh < ``alpha``. With B relabellings no p is below 1/(1 + B), so BH can only declare
    experts when at least ⌈L·K/((1 + B)·alpha)⌉ of them reach that floor (``ard_null.
    bh_min_hits`` in the descriptors): raise n_permutations for models with many experts.
  * Routing-shift test, reported twice whatever ``exclude_descriptor`` says: with the
    descriptor tokens counted and without them (``routing_shift.with_descriptor`` /
    ``without_descriptor``; the latter is null when the prompts have no descriptor spans).

Everything (group sums, metrics, the permutation nulls) derives from the per-prompt counts
(P, L, K) of routelab.counting.

Why over ~500 lines: FSP's definitions, kernels, parameters and compute_profile's input checks
are one concept and read best in one file; the permutation machinery and the planted-testbed
ground truth already live apart, in routelab.profile_null.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse, special, stats

from routelab.config import check_choice
from routelab.counting import PromptCounts, prompt_counts
from routelab.errors import RoutelabError
from routelab.profile_null import (
    ContextLayout,
    ard_permutation_test,
    designated_report,
    permutation_p,
    shift_null_sums,
)
from routelab.tables import NEUTRAL, PROFILE_COLUMNS, load_prompts
from routelab.vocab import AXES

METRICS = ("ard", "jsd", "pmi", "entropy")
DESCRIPTOR_SPAN = ("desc_start", "desc_end")  # prompts-table token span dropped by exclude_descriptor

@dataclass
class FspWeights:
    """φ weights (FARE Eq. 4; defaults of docs/method.md §2)."""

    ard: float = 1.0  # activation rate difference
    jsd: float = 0.5  # Jensen–Shannon divergence (per-expert term with layer_metrics: decompose)
    pmi: float = 0.3  # pointwise mutual information
    entropy: float = 0.0  # entropy shift (computed and reported; weight 0 in the paper)


@dataclass
class ProfileParams:
    """The ``profile:`` section of params.yaml."""

    weights: FspWeights = field(default_factory=FspWeights)
    aggregation: str = "mean"  # over groups: mean | max
    smoothing: float = 0.5  # PMI additive pseudo-count α > 0 (0.5: Jeffreys)
    layer_metrics: str = "decompose"  # JSD/entropy: decompose (per-expert terms) | broadcast
    split: str = "validation"  # prompts used: validation | test | all (FARE: FSP on validation)
    skip_first_token: bool = False  # drop position 0 of every prompt
    exclude_descriptor: bool = False  # drop descriptor tokens (length-controlled profile)
    baseline: str = "pooled"  # neutral rate of ARD/JSD/PMI: pooled (paper) | context_matched
    n_permutations: int = 1000  # permutation nulls (per-expert ARD, routing shift); 0 = skip
    alpha: float = 0.05  # BH false-discovery level of the per-expert ARD test (`significant`)
    seed: int = 0  # permutation RNG

    def __post_init__(self) -> None:
        check_choice("profile.aggregation", self.aggregation, ("mean", "max"))
        check_choice("profile.baseline", self.baseline, ("pooled", "context_matched"))
        check_choice("profile.layer_metrics", self.layer_metrics, ("decompose", "broadcast"))
        check_choice("profile.split", self.split, ("validation", "test", "all"))
        if not (self.smoothing > 0 and math.isfinite(self.smoothing)):
            raise RoutelabError(
                f"profile.smoothing must be a finite pseudo-count > 0 (found {self.smoothing}): "
                "PMI takes log2 of smoothed rates and a zero count would give -inf"
            )
        for name, w in asdict(self.weights).items():
            if not math.isfinite(w):
                raise RoutelabError(f"profile.weights.{name} must be finite, found {w}")
        if self.n_permutations < 0:
            raise RoutelabError(f"profile.n_permutations must be >= 0, found {self.n_permutations}")
        if not 0 < self.alpha < 1:
            raise RoutelabError(f"profile.alpha must be a false-discovery level in (0, 1), found {self.alpha}")


# --------------------------------------------------------------------------------------
# Metric kernels: pure numpy on count arrays, tested against hand values
# --------------------------------------------------------------------------------------


def activation_rates(counts: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """P(e|X) = A_X(e) / N_X. counts (..., K), n_tokens (...) → (..., K)."""
    return counts / n_tokens[..., None]


def distribution(counts: np.ndarray) -> np.ndarray:
    """Routing distribution over experts: counts normalised over the last axis."""
    return counts / counts.sum(axis=-1, keepdims=True)


# Natural log → bits. scipy.special's rel_entr/entr work in nats (and define 0·log 0 = 0).
_LN2 = np.log(2.0)


def js_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-expert terms of JSD(p‖q) in bits; each ≥ 0 and they sum to the JSD (last axis)."""
    m = 0.5 * (p + q)
    return 0.5 * (special.rel_entr(p, m) + special.rel_entr(q, m)) / _LN2  # p > 0 ⇒ m > 0: finite


def jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits over the last axis (= scipy jensenshannon(base=2)**2)."""
    return js_terms(p, q).sum(axis=-1)


def entropy_terms(p: np.ndarray) -> np.ndarray:
    """h_e = −p(e) log2 p(e), 0 where p(e) = 0."""
    return special.entr(p) / _LN2


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits over the last axis."""
    return entropy_terms(p).sum(axis=-1)


def pmi(
    a_g: np.ndarray, n_g: np.ndarray, a_n: np.ndarray, n_n: np.ndarray, n_all: np.ndarray, alpha: float
) -> np.ndarray:
    """PMI(g,e) = log2(P̃(e|g) / (P̃(e) P(g))) with P̃ = (A + α)/(N + 2α), P(g) = N_g / N_all.

    a_g (G, L, K), n_g (G, L), a_n (L, K) or per group (G, L, K), n_n (L,) or (G, L),
    n_all (L,) → (G, L, K). Finite for α > 0.
    """
    if not alpha > 0:
        raise RoutelabError(f"PMI smoothing must be > 0, found {alpha}")
    p_eg = (a_g + alpha) / (n_g + 2 * alpha)[..., None]  # (G, L, K)
    p_e = (a_n + alpha) / (n_n + 2 * alpha)[..., None]  # (L, K) or (G, L, K)
    p_g = n_g / n_all[None, :]  # (G, L)
    return np.log2(p_eg) - np.log2(p_e) - np.log2(p_g)[..., None]


def minmax_per_layer(x: np.ndarray, atol: float = 1e-12) -> np.ndarray:
    """Min-max normalise each row (layer) of x (L, K) to [0, 1]; a constant row → 0, not NaN."""
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    flat = span <= atol
    return np.where(flat, 0.0, (x - lo) / np.where(flat, 1.0, span))


def phi_score(normed: dict[str, np.ndarray], weights: FspWeights) -> np.ndarray:
    """φ(e,l) = Σ_i w_i · m̂_i(e,l) (FARE Eq. 4)."""
    w = asdict(weights)
    return sum(w[m] * normed[m] for m in METRICS)


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = equal use; → 1 = one slot takes all)."""
    v = np.sort(np.asarray(x, dtype=float).ravel())
    n, total = v.size, v.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * v).sum() / (n * total))


def _aggregate(x: np.ndarray, how: str) -> np.ndarray:
    """Aggregate over groups (axis 0)."""
    return x.mean(axis=0) if how == "mean" else x.max(axis=0)


@dataclass
class GroupCounts:
    """Counts per group, the input of the FSP metrics."""

    layers: np.ndarray  # (L,) true layer indices
    groups: list[str]  # G demographic groups
    axes: list[str]  # axis of each group
    a_g: np.ndarray  # (G, L, K) activation counts per group
    n_g: np.ndarray  # (G, L) counted tokens per group
    a_n: np.ndarray  # (L, K) activation counts on neutral prompts
    n_n: np.ndarray  # (L,) counted neutral tokens
    # context-matched baseline (profile.baseline: context_matched), None = the pooled a_n, n_n
    a_base: np.ndarray | None = None  # (G, L, K) Σ_c m_gc · A_{neutral of c}(e)
    n_base: np.ndarray | None = None  # (G, L) Σ_c m_gc · N_{neutral of c}


def fsp_metrics(gc: GroupCounts, cfg: ProfileParams) -> dict[str, np.ndarray]:
    """Raw and normalised FSP metrics and φ, each (L, K) (docs/method.md §2).

    Each group is compared with its baseline: the pooled neutral counts (a_n, n_n), or the
    context-matched ones (a_base, n_base) when given.
    """
    pooled = gc.a_base is None
    a_b = gc.a_n[None] if pooled else gc.a_base  # (1 or G, L, K)
    n_b = gc.n_n[None] if pooled else gc.n_base  # (1 or G, L)
    for name, arr in (("a demographic group", gc.n_g), ("the neutral set", gc.n_n), ("a baseline", n_b)):
        if (arr <= 0).any():
            raise RoutelabError(
                f"FSP: {name} has no counted tokens in some layer: relax profile.skip_first_token / "
                "profile.exclude_descriptor, or extract routing for more prompts"
            )
    p_g = activation_rates(gc.a_g, gc.n_g)  # (G, L, K)
    p_n = activation_rates(gc.a_n, gc.n_n)  # (L, K) pooled, reported as p_neutral
    ard_g = np.abs(p_g - activation_rates(a_b, n_b))  # (G, L, K)
    d_g, d_b = distribution(gc.a_g), distribution(a_b)  # (G, L, K), (1 or G, L, K)
    if cfg.layer_metrics == "decompose":
        jsd_g = js_terms(d_g, d_b)  # (G, L, K), sums over K to the layer JSD
        ent_g = np.abs(entropy_terms(d_g) - entropy_terms(d_b))
    else:  # broadcast: the layer value for every expert
        K = gc.a_n.shape[-1]
        jsd_g = np.repeat(jsd(d_g, d_b)[..., None], K, axis=-1)
        ent_g = np.repeat(np.abs(entropy(d_g) - entropy(d_b))[..., None], K, axis=-1)
    n_all = gc.n_n + gc.n_g.sum(axis=0)  # (L,)
    pmi_g = pmi(gc.a_g, gc.n_g, a_b[0] if pooled else a_b, n_b[0] if pooled else n_b, n_all, cfg.smoothing)

    raw = {
        "ard": _aggregate(ard_g, cfg.aggregation),
        "jsd": _aggregate(jsd_g, cfg.aggregation),
        "pmi": _aggregate(pmi_g, cfg.aggregation),
        "entropy": _aggregate(ent_g, cfg.aggregation),
    }
    for name, arr in raw.items():
        if not np.isfinite(arr).all():  # cannot happen with counted tokens > 0 and α > 0
            raise RoutelabError(f"FSP: metric {name} has non-finite values; please report this")
    normed = {m: minmax_per_layer(raw[m]) for m in METRICS}
    out = dict(raw)
    out.update({f"{m}_norm": normed[m] for m in METRICS})
    out["phi"] = phi_score(normed, cfg.weights)
    out["ard_top_group_idx"] = ard_g.argmax(axis=0)  # (L, K)
    out["p_neutral"] = p_n
    return out


# --------------------------------------------------------------------------------------
# Layer-level routing-shift test (the relabelling lives in routelab.profile_null)
# --------------------------------------------------------------------------------------


def shift_statistic(a_n: np.ndarray, a_d: np.ndarray) -> float:
    """Mean over layers of JSD(D_demographic ‖ D_neutral) in bits. a_* (L, K) counts."""
    return float(jsd(distribution(a_d), distribution(a_n)).mean())


def routing_shift_test(
    counts: np.ndarray, context: np.ndarray, neutral: np.ndarray, n_permutations: int, seed: int
) -> dict[str, Any]:
    """Does the descriptor shift the layer routing at all? (docs/method.md §2)

    counts (P, L, K): per-prompt activation counts; context (P,) context ids; neutral (P,)
    bool. Statistic: ``shift_statistic`` between all neutral and all demographic prompts of
    the contexts that hold exactly one neutral prompt and at least one variant. Null: in each
    context the "neutral" label goes to a uniformly drawn member (under H0 the members are
    exchangeable; routelab.profile_null.shift_null_sums). p = (1 + #{T* ≥ T}) / (1 + B).
    """
    P, L, K = counts.shape
    sums = shift_null_sums(counts, context, neutral, n_permutations, seed)
    observed = shift_statistic(sums.neutral.reshape(L, K), (sums.total - sums.neutral).reshape(L, K))
    out: dict[str, Any] = {
        "shift_jsd": observed,
        "n_contexts_tested": sums.n_contexts,
        "n_permutations": int(n_permutations),
    }
    if n_permutations == 0:
        out.update(p_value=None, null_mean=None, null_sd=None)
        return out
    null_n = sums.null_neutral.reshape(n_permutations, L, K)  # (B, L, K)
    null = jsd(distribution(sums.total.reshape(L, K)[None] - null_n), distribution(null_n)).mean(axis=1)  # (B,)
    out["p_value"] = float(permutation_p((null >= observed - 1e-15).sum(), n_permutations))
    out["null_mean"] = float(null.mean())
    out["null_sd"] = float(null.std(ddof=1)) if n_permutations > 1 else 0.0
    return out


# --------------------------------------------------------------------------------------
# The stage's entry point
# --------------------------------------------------------------------------------------


def compute_profile(
    routing_path: str | Path,
    prompts_path: str | Path | pl.DataFrame,
    cfg: ProfileParams,
    designated: dict[int, list[int]] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """FSP profile of one routing log.

    Returns ``(profile, layer_axis_jsd, descriptors)``:
      profile: one row per (layer, expert), columns ``PROFILE_COLUMNS`` (``phi`` for ARR;
      ``ard_p``, ``ard_p_bh``, ``significant``: the per-expert test, null with
      n_permutations 0);
      layer_axis_jsd: per (layer, axis) JSD(axis pooled ‖ neutral) in bits, for plots;
      descriptors: architecture descriptors (FARE Table 3), the per-expert null's summary,
      the routing-shift test with and without descriptor tokens, the settings, and, given
      ``designated`` (a planted testbed's experts, routelab.profile_null.load_designated),
      their φ ranks and significance.
    """
    prompts = load_prompts(prompts_path)
    span_problem = _descriptor_span_problem(prompts)
    if cfg.exclude_descriptor and span_problem:
        raise RoutelabError(span_problem)

    def count(exclude_descriptor: bool) -> PromptCounts:
        span = DESCRIPTOR_SPAN if exclude_descriptor else None
        return prompt_counts(routing_path, prompts, skip_first_token=cfg.skip_first_token, exclude_span=span)

    pc = count(cfg.exclude_descriptor)  # the counts φ is computed from
    # The other counting form, for the routing-shift test in both forms: a second pass over the
    # log; none when the prompts have no descriptor spans to exclude.
    pc_other = count(not cfg.exclude_descriptor) if cfg.exclude_descriptor or not span_problem else None
    name = str(routing_path)
    L, K, k = pc.layers.size, int(pc.meta.num_experts), int(pc.meta.top_k)

    in_split = (
        np.ones(prompts.height, bool) if cfg.split == "all" else (prompts["split"] == cfg.split).to_numpy()
    )
    present = pc.n_tokens.sum(axis=1) > 0  # prompts with counted tokens in the routing log
    use = in_split & present
    if not use.any():
        raise RoutelabError(
            f"{name}: no counted tokens for prompts of split '{cfg.split}': extract routing for that "
            "split, or set profile.split to the split that was extracted (validation | test | all)"
        )
    groups_all = prompts["group"].to_numpy()
    is_neutral = groups_all == NEUTRAL
    # groups expected from the prompts table (the split), each must have data
    expected = sorted(set(groups_all[in_split & ~is_neutral]))
    found = set(groups_all[use & ~is_neutral])
    empty = [g for g in expected if g not in found]
    if empty:
        raise RoutelabError(
            f"{name}: groups {empty[:5]}{' …' if len(empty) > 5 else ''} have prompts in split "
            f"'{cfg.split}' but no counted tokens in the routing log (an empty group): extract "
            "routing for all prompts of the split, or drop those prompts from the prompts table"
        )
    if not (use & is_neutral).any():
        raise RoutelabError(
            f"{name}: no neutral prompts with counted tokens in split '{cfg.split}': P(e) needs "
            "the neutral prompts; extract routing for them"
        )
    if not found:
        raise RoutelabError(f"{name}: no demographic prompts with counted tokens in split '{cfg.split}'")

    groups = expected
    axis_of = dict(
        prompts.filter(pl.col("axis").is_not_null()).select("group", "axis").unique().iter_rows()
    )
    dup = prompts.filter(pl.col("axis").is_not_null()).group_by("group").agg(pl.col("axis").n_unique())
    if (dup["axis"] > 1).any():
        several = dup.filter(pl.col("axis") > 1)["group"].to_list()
        raise RoutelabError(f"prompts table: group(s) {several} belong to several axes; a group has one axis")
    gidx = {g: i for i, g in enumerate(groups)}
    G = len(groups)

    counts = pc.counts[use]  # (P', L, K)
    ntok = pc.n_tokens[use]  # (P', L)
    g_of = groups_all[use]
    neu = g_of == NEUTRAL
    a_n = counts[neu].sum(axis=0, dtype=np.int64)  # (L, K)
    n_n = ntok[neu].sum(axis=0)  # (L,)
    lab = np.array([gidx.get(g, -1) for g in g_of])
    demo = np.flatnonzero(~neu)
    # group sums as a sparse one-hot (G × P_demo) product: much faster than np.add.at
    onehot = sparse.csr_matrix((np.ones(demo.size), (lab[demo], np.arange(demo.size))), shape=(G, demo.size))
    a_g = np.rint(onehot @ counts[demo].reshape(demo.size, L * K)).astype(np.int64).reshape(G, L, K)
    n_g = np.rint(onehot @ ntok[demo]).astype(np.int64)  # (G, L)
    zero = [(groups[g], int(pc.layers[l])) for g, l in zip(*np.nonzero(n_g == 0))]
    if zero or (n_n == 0).any():
        raise RoutelabError(
            f"{name}: no counted tokens for group/layer {zero[:3] or 'neutral'} (an empty group after "
            "the token filters): relax profile.skip_first_token / profile.exclude_descriptor"
        )
    ctx = prompts["context_id"].to_numpy()[use]
    layout = ContextLayout.build(ctx, lab + 1, G + 1)  # labels 0 = neutral, 1..G = groups
    gc = GroupCounts(pc.layers, groups, [axis_of[g] for g in groups], a_g, n_g, a_n, n_n)
    if cfg.baseline == "context_matched":
        weights = layout.matched_weights()  # (G, P')
        gc.a_base = np.rint(weights @ counts.reshape(-1, L * K)).astype(np.int64).reshape(G, L, K)
        gc.n_base = np.rint(weights @ ntok).astype(np.int64)  # (G, L)
    m = fsp_metrics(gc, cfg)

    a_d = a_g.sum(axis=0)  # (L, K) pooled demographic
    n_d = n_g.sum(axis=0)
    f = activation_rates(a_n + a_d, n_n + n_d)  # (L, K)
    d_n, d_d = distribution(a_n), distribution(a_d)
    layer_jsd = jsd(d_d, d_n)  # (L,)
    H_n, H_d = entropy(d_n), entropy(d_d)

    lay = np.repeat(pc.layers, K)  # (L*K,)
    ex = np.tile(np.arange(K), L)
    cols: dict[str, Any] = {
        "layer": lay.astype(np.int32),
        "expert": ex.astype(np.int32),
        "f": f.ravel(),
        "p_neutral": m["p_neutral"].ravel(),
        "p_demographic": activation_rates(a_d, n_d).ravel(),
    }
    for c in [*METRICS, *(f"{x}_norm" for x in METRICS), "phi"]:
        cols[c] = np.asarray(m[c], dtype=np.float64).ravel()
    B = cfg.n_permutations
    if B:
        null = ard_permutation_test(
            counts, ntok, layout, aggregation=cfg.aggregation,
            context_matched=cfg.baseline == "context_matched", n_permutations=B, seed=cfg.seed,
        )  # fmt: skip
        cols["ard_p"], cols["ard_p_bh"] = null.p, null.p_bh
        cols["significant"] = null.p_bh < cfg.alpha
    else:  # not tested: null, not "not significant"
        cols["ard_p"] = cols["ard_p_bh"] = pl.Series([None] * (L * K), dtype=pl.Float64)
        cols["significant"] = pl.Series([None] * (L * K), dtype=pl.Boolean)
    cols["ard_top_group"] = np.array(groups, dtype=object)[m["ard_top_group_idx"].ravel()]
    cols["layer_jsd"] = np.repeat(layer_jsd, K)
    cols["layer_entropy_neutral"] = np.repeat(H_n, K)
    cols["layer_entropy_demographic"] = np.repeat(H_d, K)
    profile = pl.DataFrame(cols).select(PROFILE_COLUMNS)

    # Per (layer, axis): JSD of the axis's pooled distribution vs neutral, and the mean of
    # its groups' JSDs (bits).
    g_jsd = jsd(distribution(a_g), d_n[None])  # (G, L)
    rows = []
    axes_of_groups = np.array(gc.axes)
    for axis in sorted(set(gc.axes), key=_axis_order):
        sel = axes_of_groups == axis
        a_ax = a_g[sel].sum(axis=0)  # (L, K)
        j_ax = jsd(distribution(a_ax), d_n)
        for li, layer in enumerate(pc.layers):
            rows.append(
                dict(layer=int(layer), axis=axis, jsd=float(j_ax[li]), jsd_group_mean=float(g_jsd[sel, li].mean()),
                     n_groups=int(sel.sum()), n_tokens=int(n_g[sel, li].sum()))
            )  # fmt: skip
    layer_axis = pl.DataFrame(rows)

    # Descriptors (FARE Table 3) and the permutation null.
    phi = m["phi"].ravel()
    rho = stats.spearmanr(phi, f.ravel()) if np.ptp(phi) > 0 and np.ptp(f) > 0 else None
    ranked = np.argsort(-f.ravel(), kind="stable")
    # φ is normalised per layer, so every layer's max can tie; break ties by raw ARD
    top = int(np.lexsort((-m["ard"].ravel(), -phi))[0])
    shift = {"with_descriptor": None, "without_descriptor": None}
    for exclude, pcx in ((cfg.exclude_descriptor, pc), (not cfg.exclude_descriptor, pc_other)):
        if pcx is not None:
            key = "without_descriptor" if exclude else "with_descriptor"
            shift[key] = routing_shift_test(pcx.counts[use], ctx, neu, B, cfg.seed)
    descriptors: dict[str, Any] = {
        "n_layers": int(L),
        "n_experts": int(K),
        "top_k": int(k),
        "expert_slots": int(L * K),
        "gini_f": gini(f),
        "top10_share": float(f.ravel()[ranked[:10]].sum() / f.sum()),
        "spearman_rho_phi_f": _finite(rho.statistic) if rho is not None else None,
        "spearman_p": _finite(rho.pvalue) if rho is not None else None,
        "top_phi_layer": int(pc.layers[top // K]),
        "top_phi_expert": int(top % K),
        "mean_group_jsd": float(g_jsd.mean()),
        "n_prompts_neutral": int(neu.sum()),
        "n_prompts_demographic": int((~neu).sum()),
        "n_groups": int(G),
        "n_tokens_neutral": int(n_n.max()),
        "n_tokens_demographic": int(n_d.max()),
        "n_prompts_missing": int((in_split & ~present).sum()),
        "ard_null": {
            "n_permutations": int(B),
            "n_tested": int(L * K),
            "n_significant": int(profile["significant"].sum()) if B else None,
            "p_floor": 1 / (1 + B) if B else None,
            # experts that must reach p_floor before BH can declare any (module docstring)
            "bh_min_hits": math.ceil(L * K / ((1 + B) * cfg.alpha)) if B else None,
        },
        "routing_shift": shift,
        "settings": {
            "aggregation": cfg.aggregation,
            "baseline": cfg.baseline,
            "layer_metrics": cfg.layer_metrics,
            "smoothing": cfg.smoothing,
            "split": cfg.split,
            "skip_first_token": cfg.skip_first_token,
            "exclude_descriptor": cfg.exclude_descriptor,
            "weights": asdict(cfg.weights),
            "jsd_log_base": 2,
            "alpha": cfg.alpha,
            "seed": cfg.seed,
        },
    }
    if designated is not None:
        descriptors["designated"] = designated_report(profile, designated, K)
    return profile, layer_axis, descriptors


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _axis_order(axis: str) -> int:
    return AXES.index(axis) if axis in AXES else len(AXES)


def _descriptor_span_problem(prompts: pl.DataFrame) -> str | None:
    """Why the descriptor tokens cannot be excluded (no spans), or None when they can."""
    missing = [c for c in DESCRIPTOR_SPAN if c not in prompts.columns]
    if missing:
        return (
            f"profile.exclude_descriptor needs the prompts table column(s) {missing}: build the "
            "prompts with the model's tokenizer (the `prompts` stage), or set profile.exclude_descriptor: false"
        )
    demo_missing = prompts.filter(pl.col("axis").is_not_null() & pl.col(DESCRIPTOR_SPAN[0]).is_null())
    if demo_missing.height:
        return (
            f"profile.exclude_descriptor: {demo_missing.height} demographic prompts have no "
            "descriptor token span (desc_start is null): build the prompts with the model's tokenizer "
            "(the `prompts` stage), or set profile.exclude_descriptor: false"
        )
    return None
