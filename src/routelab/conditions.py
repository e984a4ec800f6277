"""Named conditions: every intervention the FARE and SteerMoE stages evaluate (docs/method.md §3, §4, §6).

A condition is a routing edit (routing.RoutingEdit, applied per row by the evaluator) and/or
a prompt prefix, with a name that says what it is. Every stage builds its conditions from
this registry, so a new condition is one builder plus one registry line.

| kind            | edit (on the layers in ``ctx.layers`` unless said)                          | paper        |
|-----------------|------------------------------------------------------------------------------|--------------|
| baseline        | none                                                                         | all tables   |
| arr             | z − λ·φ_l (Eq. 6)                                                             | Table 6, Fig. 3 |
| arr_layer       | z − λ·φ_l on ONE layer (the AALS probe, Eq. 5)                                | Fig. 3       |
| mask_top        | the n experts with the highest φ (over all layers) switched off               | Table 2      |
| mask_bottom     | the n experts with the lowest φ switched off                                  | Table 2      |
| mask_random     | n experts drawn uniformly (one draw; the stage averages draws)                | Table 2      |
| flatten         | ARR with every φ = mean φ (a per-layer constant: a no-op for softmax routers) | Table 4      |
| random_phi      | ARR with φ shuffled within each layer (one draw)                              | Table 4      |
| inverted        | ARR with φ_max − φ                                                            | Table 4      |
| power           | ARR with φ^α rescaled to φ's maximum (the shape at equal strength)            | Table 4      |
| top_k_profile   | ARR with φ kept on the k most sensitive slots of the edited layers, 0 elsewhere | Table 4    |
| selection       | ARR with φ = 1 on a detector's selected experts (SAFEx) in the edited layers  | Table 8      |
| random_selection| ARR with φ = 1 on n random experts of the edited layers (one draw)            | Table 8      |
| prompt_prefix   | no edit; an instruction prefix before every prompt (prompt debiasing)         | Table 8      |
| steer           | SteerMoE: A+ forced on, A− forced off in log-softmax space                    | SteerMoE     |

Ties in φ (per-layer min-max gives every layer a maximum of the same height) are broken by
raw ARD, then by (layer, expert), so rankings are deterministic.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from routelab.errors import RoutelabError
from routelab.routing import RoutingEdit
from routelab.tables import load_profile, load_selection


@dataclass(frozen=True)
class Condition:
    """One evaluated condition: a label, its routing edit and/or prompt prefix, its settings."""

    name: str  # unique, short, no dots (a metrics key): "arr_0p5", "layer_2", "mask_top", "random_phi_3"
    kind: str  # the registry key that built it
    edit: RoutingEdit | None = None  # None: routing untouched
    prefix: str = ""  # text put before every context (prompt debiasing)
    group: str | None = None  # draws of one random condition share a group (averaged in tables)
    settings: dict[str, Any] = field(default_factory=dict)  # what the builder was given (recorded)


@dataclass
class ConditionContext:
    """What builders need: the model's φ profile, the layers ARR edits, sizes and a seed."""

    profile: pl.DataFrame  # one row per (layer, expert): phi (and ard for tie-breaking)
    layers: list[int]  # layers ARR-style conditions edit (AALS selection)
    num_experts: int
    top_k: int
    seed: int = 0

    def __post_init__(self) -> None:
        self.profile = load_profile(self.profile, num_experts=self.num_experts)
        have = set(self.profile["layer"].to_list())
        bad = [layer for layer in self.layers if layer not in have]
        if bad:
            raise RoutelabError(f"layers {bad} are not MoE layers of this profile (layers {sorted(have)})")

    def phi_table(self, layers: list[int] | None = None) -> pl.DataFrame:
        """(layer, expert, phi) of ``layers`` (default: ctx.layers), ranked most sensitive first."""
        df = self.profile.filter(pl.col("layer").is_in(layers if layers is not None else self.layers))
        tie = "ard" if "ard" in df.columns else "phi"
        return df.sort(["phi", tie, "layer", "expert"], descending=[True, True, False, False])

    def rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])


def _arr_from(ctx: ConditionContext, phi: pl.DataFrame, lam: float, layers: list[int]) -> RoutingEdit:
    """ARR edit from a (layer, expert, phi) table restricted to ``layers``."""
    return RoutingEdit.arr(phi.filter(pl.col("layer").is_in(layers)).select("layer", "expert", "phi"), lam, layers)


def _with_phi(ctx: ConditionContext, values: np.ndarray) -> pl.DataFrame:
    """The edited layers' profile rows with φ replaced by ``values`` (in layer, expert order)."""
    base = ctx.profile.filter(pl.col("layer").is_in(ctx.layers)).sort("layer", "expert")
    return base.select("layer", "expert").with_columns(phi=pl.Series(np.asarray(values, dtype=float)))


def _phi_array(ctx: ConditionContext) -> np.ndarray:
    """φ of the edited layers, (L_edit, K) in layer order."""
    base = ctx.profile.filter(pl.col("layer").is_in(ctx.layers)).sort("layer", "expert")
    return base["phi"].to_numpy().reshape(len(ctx.layers), ctx.num_experts)


def _experts(df: pl.DataFrame) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, expert in df.select("layer", "expert").iter_rows():
        out.setdefault(int(layer), []).append(int(expert))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _fmt(x: float) -> str:
    """A number in a name without dots (dots separate `dvc metrics` keys): 0.25 → 0p25."""
    return f"{x:g}".replace(".", "p").replace("-", "m")


# --- builders: (ctx, **settings) -> Condition -----------------------------------------------


def baseline(ctx: ConditionContext) -> Condition:
    return Condition("baseline", "baseline")


def arr(ctx: ConditionContext, lam: float, layers: list[int] | None = None) -> Condition:
    layers = list(ctx.layers if layers is None else layers)
    edit = _arr_from(ctx, ctx.profile, lam, layers)
    return Condition(f"arr_{_fmt(lam)}", "arr", edit, settings={"lambda": lam, "layers": layers})


def arr_layer(ctx: ConditionContext, lam: float, layer: int) -> Condition:
    edit = _arr_from(ctx, ctx.profile, lam, [layer])
    return Condition(f"layer_{layer}", "arr_layer", edit, settings={"lambda": lam, "layer": layer})


def _check_n(ctx: ConditionContext, n: int, key: str) -> None:
    slots = ctx.profile.height
    if not 1 <= n <= slots:
        raise RoutelabError(f"{key} = {n}: needs 1 <= n <= {slots} (the model's expert slots L·K)")


def _mask(ctx: ConditionContext, chosen: pl.DataFrame, name: str, kind: str, settings: dict, group=None) -> Condition:
    experts = _experts(chosen)
    too_many = {l: len(e) for l, e in experts.items() if ctx.num_experts - len(e) < ctx.top_k}
    if too_many:
        raise RoutelabError(
            f"{name}: masking {too_many} experts per layer leaves fewer than k={ctx.top_k} of "
            f"{ctx.num_experts} enabled: lower masking.n"
        )
    return Condition(name, kind, RoutingEdit.mask(experts), group=group,
                     settings={**settings, "experts": {str(k): v for k, v in experts.items()}})  # fmt: skip


def mask_top(ctx: ConditionContext, n: int) -> Condition:
    _check_n(ctx, n, "masking.n")
    ranked = ctx.phi_table(sorted(set(ctx.profile["layer"].to_list())))
    return _mask(ctx, ranked.head(n), "mask_top", "mask_top", {"n": n})


def mask_bottom(ctx: ConditionContext, n: int) -> Condition:
    _check_n(ctx, n, "masking.n")
    ranked = ctx.phi_table(sorted(set(ctx.profile["layer"].to_list())))
    return _mask(ctx, ranked.tail(n), "mask_bottom", "mask_bottom", {"n": n})


def mask_random(ctx: ConditionContext, n: int, draw: int) -> Condition:
    _check_n(ctx, n, "masking.n")
    rows = ctx.profile.sort("layer", "expert")
    pick = ctx.rng(1, draw).choice(rows.height, size=n, replace=False)
    return _mask(ctx, rows[sorted(pick.tolist())], f"mask_random_{draw}", "mask_random",
                 {"n": n, "draw": draw}, group="mask_random")  # fmt: skip


def flatten(ctx: ConditionContext, lam: float = 1.0) -> Condition:
    phi = _phi_array(ctx)
    edit = _arr_from(ctx, _with_phi(ctx, np.full(phi.size, phi.mean())), lam, ctx.layers)
    return Condition("flatten", "flatten", edit, settings={"lambda": lam, "layers": ctx.layers})


def random_phi(ctx: ConditionContext, draw: int, lam: float = 1.0) -> Condition:
    phi = _phi_array(ctx)
    rng = ctx.rng(2, draw)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in phi])  # (L_edit, K) within-layer shuffle
    edit = _arr_from(ctx, _with_phi(ctx, shuffled.ravel()), lam, ctx.layers)
    return Condition(f"random_phi_{draw}", "random_phi", edit, group="random_phi",
                     settings={"lambda": lam, "layers": ctx.layers, "draw": draw})  # fmt: skip


def inverted(ctx: ConditionContext, lam: float = 1.0) -> Condition:
    phi = _phi_array(ctx)
    edit = _arr_from(ctx, _with_phi(ctx, (phi.max() - phi).ravel()), lam, ctx.layers)
    return Condition("inverted", "inverted", edit, settings={"lambda": lam, "layers": ctx.layers})


def power(ctx: ConditionContext, alpha: float, lam: float = 1.0) -> Condition:
    """ARR with φ^α rescaled to φ's maximum: the profile's shape changes, its strength does not."""
    if not alpha > 0:
        raise RoutelabError(f"ablation.powers: α must be > 0, found {alpha}")
    phi = np.clip(_phi_array(ctx), 0, None)  # (L_edit, K)
    powered = phi**alpha  # (L_edit, K)
    if powered.max() > 0:
        powered = powered * (phi.max() / powered.max())  # max φ^α = max φ (docs/method.md §4, Table 4)
    edit = _arr_from(ctx, _with_phi(ctx, powered.ravel()), lam, ctx.layers)
    return Condition(f"power_{_fmt(alpha)}", "power", edit, settings={"lambda": lam, "alpha": alpha, "layers": ctx.layers})


def top_k_profile(ctx: ConditionContext, k: int, lam: float = 1.0) -> Condition:
    ranked = ctx.phi_table()
    k_eff = min(int(k), ranked.height)  # clipped to the edited layers' expert slots
    keep = ranked.head(k_eff).select("layer", "expert", keep=pl.lit(True))
    phi = (
        ctx.profile.filter(pl.col("layer").is_in(ctx.layers)).sort("layer", "expert")
        .join(keep, on=["layer", "expert"], how="left")
        .with_columns(phi=pl.when(pl.col("keep")).then(pl.col("phi")).otherwise(0.0))
    )  # fmt: skip
    edit = _arr_from(ctx, phi, lam, ctx.layers)
    return Condition(f"top_{int(k)}", "top_k_profile", edit,
                     settings={"lambda": lam, "k": int(k), "k_used": k_eff, "layers": ctx.layers})  # fmt: skip


def _selection_phi(ctx: ConditionContext, chosen: pl.DataFrame) -> pl.DataFrame:
    """φ = 1 on the ``chosen`` (layer, expert) rows of the edited layers, 0 on the others."""
    grid = ctx.profile.filter(pl.col("layer").is_in(ctx.layers)).select("layer", "expert").sort("layer", "expert")
    mark = chosen.select(pl.col("layer").cast(grid["layer"].dtype), pl.col("expert").cast(grid["expert"].dtype),
                         phi=pl.lit(1.0))  # fmt: skip
    return grid.join(mark, on=["layer", "expert"], how="left").with_columns(pl.col("phi").fill_null(0.0))


def selected_in_layers(table: pl.DataFrame | str, layers: list[int]) -> pl.DataFrame:
    """The (layer, expert) rows a selection table (safex) selects within ``layers``."""
    sel = load_selection(table)
    chosen = sel.filter(pl.col("selected")) if "selected" in sel.columns else sel
    return chosen.filter(pl.col("layer").is_in(layers)).select("layer", "expert").sort("layer", "expert")


def selection(ctx: ConditionContext, table: pl.DataFrame | str, lam: float, label: str = "safex") -> Condition:
    """ARR with φ = 1 on a selection's experts in the edited layers (the layers FSP's ARR edits:
    like for like, docs/method.md §4 Table 8)."""
    chosen = selected_in_layers(table, ctx.layers)
    if chosen.height == 0:
        raise RoutelabError(
            f"{label}: the selection has no expert in layers {ctx.layers}: nothing to edit (the stage records this "
            "and skips the condition)"
        )
    edit = _arr_from(ctx, _selection_phi(ctx, chosen), lam, ctx.layers)
    return Condition(f"{label}_{_fmt(lam)}", "selection", edit,
                     settings={"lambda": lam, "layers": ctx.layers, "n_selected": chosen.height,
                               "experts": _experts(chosen)})  # fmt: skip


def random_selection(ctx: ConditionContext, n: int, lam: float, draw: int) -> Condition:
    """ARR with φ = 1 on n experts drawn uniformly from the edited layers (one draw; the same
    draw at every λ)."""
    slots = ctx.profile.filter(pl.col("layer").is_in(ctx.layers)).sort("layer", "expert")
    if not 1 <= n <= slots.height:
        raise RoutelabError(f"random selection of {n} experts: needs 1 <= n <= {slots.height} (the slots of layers {ctx.layers})")
    pick = slots[sorted(ctx.rng(3, draw).choice(slots.height, size=n, replace=False).tolist())]
    edit = _arr_from(ctx, _selection_phi(ctx, pick), lam, ctx.layers)
    return Condition(f"random_selection_{draw}_{_fmt(lam)}", "random_selection", edit,
                     group=f"random_selection_{_fmt(lam)}",
                     settings={"lambda": lam, "n": n, "draw": draw, "layers": ctx.layers,
                               "experts": _experts(pick)})  # fmt: skip


def prompt_prefix(ctx: ConditionContext, text: str) -> Condition:
    if not text.strip():
        raise RoutelabError("alternatives.prompt_prefix is empty: give the instruction text, or drop prompt_prefix from alternatives.conditions")
    return Condition("prompt_prefix", "prompt_prefix", None, prefix=text.rstrip() + " ", settings={"prefix": text})


def steer(ctx: ConditionContext, table: pl.DataFrame, label: str = "steer") -> Condition:
    edit = RoutingEdit.steer_table(table)
    acts = {a: int((table["action"] == a).sum()) for a in ("activate", "deactivate")}
    return Condition(label, "steer", edit, settings=acts)


Builder = Callable[..., Condition]
CONDITIONS: dict[str, Builder] = {
    "baseline": baseline,
    "arr": arr,
    "arr_layer": arr_layer,
    "mask_top": mask_top,
    "mask_bottom": mask_bottom,
    "mask_random": mask_random,
    "flatten": flatten,
    "random_phi": random_phi,
    "inverted": inverted,
    "power": power,
    "top_k_profile": top_k_profile,
    "selection": selection,
    "random_selection": random_selection,
    "prompt_prefix": prompt_prefix,
    "steer": steer,
}


def build(kind: str, ctx: ConditionContext, **settings: Any) -> Condition:
    """The condition ``kind`` built with ``settings``; unknown kinds get "Did you mean …?"."""
    if kind not in CONDITIONS:
        near = difflib.get_close_matches(kind, CONDITIONS, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise RoutelabError(f"unknown condition '{kind}'.{hint} Available: {', '.join(CONDITIONS)}")
    return CONDITIONS[kind](ctx, **settings)
