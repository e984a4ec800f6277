"""FSP figures as PNG (matplotlib, Agg backend), written atomically (routelab.io).

Usage (what the `profile` stage calls)::

    from routelab import plots
    plots.phi_heatmap(profile, "plots/models/olmoe/profile/phi_heatmap.png", title="OLMoE")
    plots.phi_heatmap(profile, "plots/models/routed/profile/phi_heatmap.png", designated={2: [5, 9]})  # boxed cells
    plots.jsd_by_axis(layer_axis, "plots/models/olmoe/profile/jsd_by_axis.png")
    plots.routing_shift(profile, "plots/models/olmoe/profile/routing_shift.png")   # FARE Figure 1
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from routelab.errors import RoutelabError  # noqa: E402
from routelab.io import atomic_path  # noqa: E402


def _need(df: pl.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise RoutelabError(
            f"{what}: table lacks columns {missing} (has {df.columns}); pass the output of compute_profile"
        )
    if df.height == 0:
        raise RoutelabError(f"{what}: empty table")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _grid(profile: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(L, K) matrix of ``column`` and the layer indices, from a one-row-per-(layer, expert) table."""
    layers = np.array(sorted(profile["layer"].unique().to_list()))
    K = int(profile["expert"].max()) + 1
    grid = np.full((layers.size, K), np.nan)
    li = {l: i for i, l in enumerate(layers)}
    for l, e, v in profile.select("layer", "expert", column).iter_rows():
        grid[li[l], e] = v
    return grid, layers


def phi_heatmap(
    profile: pl.DataFrame,
    path: str | Path,
    title: str = "",
    column: str = "phi",
    designated: dict[int, list[int]] | None = None,
) -> Path:
    """Layer x expert heatmap of φ (or another per-expert column).

    ``designated``: a planted testbed's designated experts ({layer: [expert, ...]},
    routelab.profile_null.load_designated); each gets a red box, and the title says so.
    """
    _need(profile, ("layer", "expert", column), "phi_heatmap")
    grid, layers = _grid(profile, column)  # (L, K)
    L, K = grid.shape
    fig, ax = plt.subplots(figsize=(min(16, 3 + K * 0.12), min(10, 1.5 + L * 0.35)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(L), [str(l) for l in layers])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    heading = f"{title} FSP sensitivity {column}(e, l)".strip()
    if designated:
        row = {int(l): i for i, l in enumerate(layers)}
        missing = sorted(set(designated) - set(row))
        if missing:
            raise RoutelabError(f"phi_heatmap: designated layers {missing} are not in the profile (layers {list(row)})")
        box = dict(fill=False, edgecolor="red", linewidth=1.5)
        for layer, experts in designated.items():
            for e in experts:  # imshow cell (row, e) spans [e − ½, e + ½] × [row − ½, row + ½]
                ax.add_patch(Rectangle((e - 0.5, row[layer] - 0.5), 1, 1, **box))
        heading += "\nred boxes: the designated experts (plant.json)"
    ax.set_title(heading)
    fig.colorbar(im, ax=ax, label=column)
    return _save(fig, path)


def jsd_by_axis(layer_axis: pl.DataFrame, path: str | Path, title: str = "", column: str = "jsd") -> Path:
    """Per-layer JSD(axis pooled ‖ neutral) in bits, one line per demographic axis."""
    _need(layer_axis, ("layer", "axis", column), "jsd_by_axis")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    axes = list(dict.fromkeys(layer_axis["axis"].to_list()))
    for a in axes:
        sub = layer_axis.filter(pl.col("axis") == a).sort("layer")
        ax.plot(sub["layer"].to_numpy(), sub[column].to_numpy(), marker="o", ms=3, label=a)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("JSD (bits)")
    ax.set_title(f"{title} routing shift by demographic axis".strip())
    ax.legend(fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def routing_shift(profile: pl.DataFrame, path: str | Path, layer: int | None = None, title: str = "") -> Path:
    """Neutral vs demographic activation rate of one layer's experts (FARE Figure 1).

    ``layer``: None picks the layer with the largest JSD(demographic ‖ neutral).
    """
    _need(profile, ("layer", "expert", "p_neutral", "p_demographic"), "routing_shift")
    if layer is None:
        by = "layer_jsd" if "layer_jsd" in profile.columns else "phi"
        layer = int(profile.sort(by, descending=True)["layer"][0])
    sub = profile.filter(pl.col("layer") == layer).sort("expert")
    if sub.height == 0:
        have = sorted(profile["layer"].unique().to_list())
        raise RoutelabError(f"routing_shift: layer {layer} is not in the profile (layers {have})")
    e = sub["expert"].to_numpy()
    fig, ax = plt.subplots(figsize=(min(16, 3 + e.size * 0.15), 4))
    w = 0.4
    ax.bar(e - w / 2, sub["p_neutral"].to_numpy(), width=w, label="neutral")
    ax.bar(e + w / 2, sub["p_demographic"].to_numpy(), width=w, label="demographic")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("expert")
    ax.set_ylabel("activation rate (per token)")
    ax.set_title(f"{title} layer {layer}: routing under neutral vs demographic prompts".strip())
    ax.legend()
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# Intervention stages: each writes its PNG and the CSV that `dvc plots` draws
# --------------------------------------------------------------------------------------


def nothing(path: str | Path, title: str, why: str) -> Path:
    """A figure that says why there is nothing to draw (a skipped condition is a result, issue 21)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    ax.set_title(title.strip())
    return _save(fig, Path(path))


def _write_csv(df: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.write_csv(tmp)


def aals_ratios(result: dict, out_dir: str | Path, title: str = "") -> Path:
    """R(l) per layer (FARE Figure 3), selected layers highlighted; writes r_by_layer.png/.csv."""
    out = Path(out_dir)
    rows = [{"layer": int(l), **{k: v for k, v in t.items() if isinstance(v, (int, float)) or v is None}}
            for l, t in result["layers"].items()]  # fmt: skip
    df = pl.DataFrame(rows).sort("layer").with_columns(selected=pl.col("layer").is_in(result["selected"]))
    _write_csv(df, out / "r_by_layer.csv")
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * df.height + 2), 3.5))
    colors = ["tab:red" if s else "tab:gray" for s in df["selected"].to_list()]
    ax.bar(df["layer"].to_numpy(), df["R"].to_numpy(), color=colors)
    ax.axhline(0, color="black", lw=0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("MoE layer (red: selected)")
    ax.set_ylabel("R(l) = Δbias / (|ΔPPL| + 1e-6)")
    ax.set_title(f"{title} AALS: one-layer ARR probes at λ = {result['settings']['lambda_probe']:g}".strip())
    return _save(fig, out / "r_by_layer.png")


def arr_frontier(result: dict, out_dir: str | Path, title: str = "") -> Path:
    """Bias–utility frontier of the λ sweep with λ* marked; writes frontier.png/.csv."""
    out = Path(out_dir)
    df = pl.DataFrame(result["sweep"])
    _write_csv(df, out / "frontier.csv")
    if df.is_empty():  # AALS selected no layer: no sweep, and the figure says why (the stage's outputs stay complete)
        return nothing(out / "frontier.png", f"{title} ARR bias–utility frontier",
                       f"no λ sweep: {result.get('reason', 'no layer to edit')}")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["ppl"].to_numpy(), df["pct_stereotype"].to_numpy(), "o-", color="tab:blue")
    for lam, x, y in df.select("lambda", "ppl", "pct_stereotype").iter_rows():
        ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    star = df.filter(pl.col("chosen"))
    ax.plot(star["ppl"].to_numpy(), star["pct_stereotype"].to_numpy(), "*", ms=16, color="tab:red", label="λ*")
    ax.axvline(result["ppl_budget"], ls="--", color="gray", label="PPL budget (1+β)·PPL_base")
    ax.axhline(0.5, ls=":", color="green", label="parity 0.5")
    ax.set_xlabel("perplexity (validation)")
    ax.set_ylabel("CrowS preference (validation)")
    ax.set_title(f"{title} ARR bias–utility frontier, λ* = {result['lambda_star']:g}".strip())
    ax.legend(fontsize=8)
    return _save(fig, out / "frontier.png")


def condition_deltas(records: list[dict], out_dir: str | Path, name: str, title: str = "") -> Path:
    """Δ of each condition's metrics with 95 % CIs (one panel per metric); <name>.png/.csv.

    ``records``: a stage's comparison records (routelab.interventions.records); a comparison between
    two conditions is labelled "<condition> vs <reference>"."""
    out = Path(out_dir)
    recs = [{**r, "condition": r["condition"] if r.get("reference", "baseline") == "baseline"
             else f"{r['condition']} vs {r['reference']}"} for r in records]  # fmt: skip
    df = pl.DataFrame(recs)
    _write_csv(df, out / f"{name}.csv")
    if not recs:  # every condition skipped (the stage's metrics say why)
        return nothing(out / f"{name}.png", f"{title} {name}", "no condition ran: see the stage's `skipped`")
    metrics = list(dict.fromkeys(f"{r['benchmark']}.{r['metric']}" for r in recs))
    conds = list(dict.fromkeys(r["condition"] for r in recs))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 0.35 * len(conds) + 1.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sub = [r for r in recs if f"{r['benchmark']}.{r['metric']}" == m]
        y = np.arange(len(sub))
        d = np.array([r["delta"] for r in sub])
        lo = d - np.array([r["ci_low"] for r in sub])
        hi = np.array([r["ci_high"] for r in sub]) - d
        colors = ["tab:red" if (r["p_bh"] is not None and r["p_bh"] < 0.05) else "tab:gray" for r in sub]
        ax.barh(y, d, xerr=[lo, hi], color=colors, capsize=2)
        ax.set_yticks(y, [r["condition"] for r in sub], fontsize=8)
        ax.axvline(0, color="black", lw=0.5)
        ax.invert_yaxis()
        ax.set_title(f"Δ {m} (red: p_BH < 0.05)", fontsize=9)
    fig.suptitle(title)
    return _save(fig, out / f"{name}.png")


def layer_shift_csv(profile: pl.DataFrame, layer_axis: pl.DataFrame, path: str | Path) -> Path:
    """Per layer: JSD(pooled demographic ‖ neutral) and each axis's JSD, in bits — the data of the
    `dvc plots` "routing shift per layer" plot."""
    _need(profile, ("layer", "layer_jsd"), "layer_shift_csv")
    _need(layer_axis, ("layer", "axis", "jsd"), "layer_shift_csv")
    pooled = profile.group_by("layer").agg(layer_jsd=pl.col("layer_jsd").first())
    wide = layer_axis.pivot(on="axis", index="layer", values="jsd")
    table = pooled.join(wide, on="layer", how="left").sort("layer")
    path = Path(path)
    _write_csv(table, path)
    return path


def by_model(table: pl.DataFrame, x: str, y: str, path: str | Path, title: str = "", points: bool = False) -> Path:
    """One figure of a long table with a ``model`` column: a line (``points``: markers joined in
    table order) per model. The report stage draws the `dvc plots` of dvc.yaml with it: images,
    so `dvc plots show/diff` render offline (a Vega plot loads its library from a CDN)."""
    _need(table, ("model", x, y), f"{path}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in table["model"].unique(maintain_order=True).to_list():
        sub = table.filter(pl.col("model") == model)
        ax.plot(sub[x].to_numpy(), sub[y].to_numpy(), marker="o" if points else None, ms=4, label=model)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
