"""FSP figures as PNG (matplotlib, Agg backend), written atomically (routelab.io).

Usage (what the `profile` stage calls)::

    from routelab import plots
    plots.phi_heatmap(profile, "plots/olmoe/phi_heatmap.png", title="OLMoE")
    plots.jsd_by_axis(layer_axis, "plots/olmoe/jsd_by_axis.png")
    plots.routing_shift(profile, "plots/olmoe/routing_shift.png")   # FARE Figure 1
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
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


def phi_heatmap(profile: pl.DataFrame, path: str | Path, title: str = "", column: str = "phi") -> Path:
    """Layer x expert heatmap of φ (or another per-expert column)."""
    _need(profile, ("layer", "expert", column), "phi_heatmap")
    grid, layers = _grid(profile, column)  # (L, K)
    L, K = grid.shape
    fig, ax = plt.subplots(figsize=(min(16, 3 + K * 0.12), min(10, 1.5 + L * 0.35)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(L), [str(l) for l in layers])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(f"{title} FSP sensitivity {column}(e, l)".strip())
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
