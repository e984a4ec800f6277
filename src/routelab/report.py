"""One report a researcher can read: the paper's tables for every model run, and its figures.

    doc = build_report(["control", "diffuse", "routed", "routed_null"], "metrics", "plots/models")
    write_report(doc, "plots/report")          # report.md (images linked) + report.html (self-contained)
    check_html("plots/report/report.html", "plots/report/screenshot.png")   # as a person would see it

The report is built from the pipeline's outputs only (metrics/<m>/<stage>.json and the
figures under plots/models/<m>/): one block list, rendered twice. The Markdown links its
images; the HTML embeds them (base64) and has no external URL, so it reads offline. A model
that did not run a stage shows "—" in that stage's tables, so adding a model to
`pipeline.models` adds its row everywhere.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from routelab.errors import RoutelabError
from routelab.io import atomic_path, write_text

# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    intro: str = ""
    blocks: list[Table | Figure | str] = field(default_factory=list)


def _read(metrics_dir: Path, model: str, stage: str) -> dict[str, Any] | None:
    p = metrics_dir / model / f"{stage}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** (-digits) or x == 0 else f"{x:.1e}"
    return str(x)


def _p(p: Any) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _bold_if(text: str, cond: bool) -> str:
    return f"**{text}**" if cond else text


def _cmp(res: dict | None, key: str, alpha: float = 0.05) -> str:
    """before → after (Δ, p_BH), bold when p_BH < alpha."""
    if not res or key not in res:
        return "—"
    r = res[key]
    text = f"{_f(r['before'])} → {_f(r['after'])} (Δ {r['delta']:+.3f}, p_BH {_p(r['p_bh'])})"
    return _bold_if(text, r["p_bh"] is not None and r["p_bh"] < alpha)


def _delta(res: dict | None, key: str, alpha: float = 0.05) -> str:
    if not res or key not in res:
        return "—"
    r = res[key]
    return _bold_if(f"{r['delta']:+.3f} ({_p(r['p_bh'])})", r["p_bh"] is not None and r["p_bh"] < alpha)


# --------------------------------------------------------------------------------------------
# The report's sections (each reads one or two stages' metrics for every model)
# --------------------------------------------------------------------------------------------

CROWS, TQA, PPL = "crows_pairs.pct_stereotype", "truthfulqa.mc1", "perplexity.ppl"


def _models_section(models, m) -> Section:
    rows = []
    for name in models:
        tb, prof, base = m(name, "testbed"), m(name, "profile"), m(name, "bench_baseline")
        crows = (base or {}).get("crows_pairs", {}).get("test", {})
        tqa = (base or {}).get("truthfulqa", {}).get("test", {})
        ppl = (base or {}).get("perplexity", {}).get("test", {})
        shape = f"{prof['n_layers']} × {prof['n_experts']}, top-{prof['top_k']}" if prof else "—"
        rows.append([name, _f(tb.get("strength")) if tb else "—", shape, _f(crows.get("pct_stereotype")),
                     _f(tqa.get("mc1")), _f(ppl.get("ppl"))])  # fmt: skip
    return Section("Models", "Each model of `pipeline.models`, its routing shape and its baseline on the test split "
                   "(testbeds: the stereotype strength of the corpus).",
                   [Table(["model", "strength", "MoE layers × experts", "CrowS preference", "fact/TQA MC1", "perplexity"], rows)])  # fmt: skip


def _prompts_section(models, m) -> Section:
    rows = []
    for name in models:
        p = m(name, "prompts")
        if p:
            rows.append([name, str(p["n_neutral"]), str(p["n_demographic"]), str(p["n_groups"]),
                         str(p["n_contexts"]), f"{p['n_validation']} / {p['n_test']}"])  # fmt: skip
    return Section("Prompt set", "FARE Stage 1: neutral prompts and one-descriptor variants over nine axes.",
                   [Table(["model", "neutral", "demographic", "groups", "contexts", "validation / test"], rows)])


def _profile_section(models, m, figs) -> Section:
    rows, blocks = [], []
    for name in models:
        p = m(name, "profile")
        if not p:
            continue
        rs = p.get("routing_shift", {})
        w, wo = rs.get("with_descriptor") or {}, rs.get("without_descriptor") or {}
        des = p.get("designated")
        des_txt = "—"
        if des:
            ranks = ", ".join(f"{k} #{v['rank']}" for k, v in des["experts"].items())
            des_txt = f"{ranks} (all top: {_f(des['all_top_ranked'])})"
        rows.append([name, str(p["expert_slots"]), _f(p["gini_f"]), _f(p["top10_share"]),
                     _f(p.get("spearman_rho_phi_f")), f"{p['ard_null']['n_significant']}/{p['ard_null']['n_tested']}",
                     f"{_f(w.get('shift_jsd'), 4)} (p {_p(w.get('p_value'))})",
                     f"{_f(wo.get('shift_jsd'), 4)} (p {_p(wo.get('p_value'))})", des_txt])  # fmt: skip
    blocks.append(Table(["model", "expert slots", "Gini f", "top-10 share", "ρ(φ, f)", "BH-significant experts",
                         "routing shift JSD, descriptors counted", "… descriptors excluded", "designated experts' φ rank"],
                        rows, "FARE Table 3 descriptors, and where the planted experts rank (testbeds)."))  # fmt: skip
    for name in models:
        blocks.append(figs(name, "profile/phi_heatmap.png",
                           f"{name}: φ(e, l) per layer and expert (boxes: designated experts). Look for experts "
                           "that stand out within their layer; every layer has a maximum by construction."))
        blocks.append(figs(name, "profile/routing_shift.png",
                           f"{name}: activation rates under neutral vs demographic prompts in the layer with the "
                           "largest JSD (FARE Figure 1). Look for experts whose bars differ."))
    return Section("FSP sensitivity profile", "FARE Stage 2 (docs/method.md §2). Sensitivity is not bias: the "
                   "balanced control and the planted null are sensitive too.", blocks)


def _aals_section(models, m, figs) -> Section:
    rows, blocks = [], []
    for name in models:
        a, s = m(name, "aals"), m(name, "arr_sweep")
        if not a:
            continue
        r = ", ".join(f"L{l} {_f(v['R'], 2)}" for l, v in sorted(a["layers"].items(), key=lambda kv: int(kv[0])))
        rows.append([name, r, str(a["selected"]), _f(s["lambda_star"], 2) if s else "—", s["reason"] if s else "—"])
    blocks.append(Table(["model", "R(l) per layer", "AALS layers", "λ*", "why λ*"], rows,
                        "AALS R(l) = Δbias/(|ΔPPL| + 1e-6) (Eq. 5) and the Pareto λ* (Eq. 7)."))
    for name in models:
        blocks.append(figs(name, "aals/r_by_layer.png", f"{name}: R(l) of each one-layer probe (red: selected). A tall "
                           "bar with a tiny ΔPPL can be noise: compare with the probe's p_BH in aals.json."))
        blocks.append(figs(name, "arr_sweep/frontier.png", f"{name}: bias–utility frontier of the λ sweep; the star is "
                           "λ*, the dashed line the PPL budget. Look for how far the preference moves before the budget."))
    return Section("AALS and λ*", "FARE Stage 3 on the validation split (docs/method.md §3).", blocks)


def _table6(models, m) -> Section:
    rows = []
    for name in models:
        t = m(name, "arr_test")
        if t:
            res = t["results"]
            rows.append([name, _f(t["lambda_star"], 2), str(t["layers"]), _cmp(res, CROWS), _cmp(res, TQA), _cmp(res, PPL)])
    return Section("Table 6 — ARR at λ* on the test split", "Bold: p_BH < 0.05 (BH across this stage's tests).",
                   [Table(["model", "λ*", "layers", "CrowS", "TQA / fact MC1", "perplexity"], rows)])


def _condition_table(title, intro, stage, models, m, conditions: Sequence[tuple[str, str]], figs, fig=None) -> Section:
    rows = []
    for name in models:
        res = (m(name, stage) or {}).get("results")
        if not res:
            continue
        for key, label in conditions:
            if key in res:
                rows.append([name, label, _delta(res[key], CROWS), _delta(res[key], TQA), _delta(res[key], PPL)])
    blocks: list[Any] = [Table(["model", "condition", "ΔCrowS (p_BH)", "ΔTQA (p_BH)", "ΔPPL (p_BH)"], rows)]
    if fig:
        blocks += [figs(name, fig[0], fig[1].format(model=name)) for name in models]
    return Section(title, intro, blocks)


def _table7(models, m) -> Section:
    rows = []
    for name in models:
        g = m(name, "generation")
        if not g:
            continue
        for cond, res in g["results"].items():
            for key, r in res.items():
                proto, metric = key.split(".", 1)
                rows.append([name, proto, cond, metric, _f(r["before"]), _f(r["after"]),
                             _bold_if(f"{r['delta']:+.3f}", r["p_bh"] is not None and r["p_bh"] < 0.05), _p(r["p_bh"])])  # fmt: skip
    return Section("Table 7 — generation transfer", "Decoded text under each condition vs the baseline, paired over "
                   "prompts (samples averaged per prompt); bold: p_BH < 0.05.",
                   [Table(["model", "protocol", "condition", "metric", "before", "after", "Δ", "p_BH"], rows)])


def _steer_section(models, m) -> Section:
    rows = []
    for name in models:
        s = m(name, "steer")
        if s:
            rows.append([name, s["behaviour"], str(s["n_pairs"]), ", ".join(s["selected"]["deactivate"]) or "—",
                         ", ".join(s["selected"]["activate"]) or "—", _cmp(s["results"].get("steer"), CROWS),
                         _cmp(s["results"].get("steer"), TQA)])  # fmt: skip
    return Section("SteerMoE", "Experts detected from paired inputs by activation-rate difference and forced off "
                   "(or on) in log-softmax space (docs/method.md §6), test split.",
                   [Table(["model", "behaviour", "pairs", "deactivated", "activated", "CrowS", "TQA / fact MC1"], rows)])


def build_report(models: Sequence[str], metrics_dir: str | Path, plots_dir: str | Path) -> list[Section]:
    """The report's sections for ``models`` from metrics/<m>/*.json and plots/models/<m>/."""
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    if not models:
        raise RoutelabError("report: no models given; set pipeline.models")
    m: Callable[[str, str], dict | None] = lambda name, stage: _read(metrics_dir, name, stage)  # noqa: E731

    def figs(name: str, rel: str, caption: str) -> Figure:
        return Figure(plots_dir / name / rel, caption)

    return [
        _models_section(models, m),
        _prompts_section(models, m),
        _profile_section(models, m, figs),
        _aals_section(models, m, figs),
        _table6(models, m),
        _condition_table("Table 2 — group masking", "The top-n, bottom-n and random-n experts by φ switched off "
                         "(test split); random-n is averaged over draws.", "masking", models, m,
                         [("mask_top", "top-n φ"), ("mask_bottom", "bottom-n φ"), ("mask_random", "random-n (avg)")],
                         figs, ("masking/masking.png", "{model}: Δ with 95 % CIs per masking condition (red: p_BH < 0.05).")),
        _condition_table("Table 4 — synthetic ablation", "ARR at λ = `ablation.lam` (the paper: 1) on the AALS layers "
                         "with ablated profiles (test split). 'flatten' is a per-layer constant: exactly no effect on "
                         "softmax routers.",
                         "ablation", models, m,
                         [("flatten", "flatten"), ("random_phi", "random φ (avg)"), ("inverted", "inverted"),
                          ("power_0p25", "α = 0.25"), ("power_0p5", "α = 0.5"), ("power_1", "α = 1 (FSP)"),
                          ("power_2", "α = 2"), ("power_4", "α = 4"), ("top_5", "top-5"), ("top_10", "top-10"),
                          ("top_25", "top-25"), ("top_50", "top-50"), ("top_100", "top-100")],
                         figs, ("ablation/ablation.png", "{model}: Δ with 95 % CIs per ablation profile.")),
        _condition_table("Table 8 — baselines at λ*", "Expert identification by FSP, SAFEx-style selection and random "
                         "selection, all with ARR at λ*, and prompt debiasing (test split).", "baselines", models, m,
                         [("fsp", "FARE FSP"), ("safex", "SAFEx"), ("random_selection", "random (avg)"),
                          ("prompt_prefix", "prompt debiasing")], figs),
        _steer_section(models, m),
        _table7(models, m),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_markdown(sections: Sequence[Section], out_dir: Path, title: str) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.intro:
            lines += [s.intro, ""]
        for b in s.blocks:
            if isinstance(b, Table):
                if b.caption:
                    lines += [b.caption, ""]
                if not b.rows:
                    lines += ["(no model ran this stage)", ""]
                    continue
                lines.append("| " + " | ".join(b.header) + " |")
                lines.append("|" + "---|" * len(b.header))
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b.rows]
                lines.append("")
            elif isinstance(b, Figure):
                if b.path.exists():
                    lines += [f"![{b.caption}]({os.path.relpath(b.path, out_dir)})", "", f"*{b.caption}*", ""]
            else:
                lines += [b, ""]
    return "\n".join(lines)


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-size:13px;color:#555}
caption{caption-side:top;text-align:left;font-size:13px;color:#555;padding:4px 0}"""


def _inline_md(text: str) -> str:
    """**bold** and `code` of a table cell or paragraph, escaped for HTML."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(sections: Sequence[Section], title: str) -> str:
    """A self-contained page: images embedded as data URIs, no external URL anywhere."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.intro:
            body.append(f"<p>{_inline_md(s.intro)}</p>")
        for b in s.blocks:
            if isinstance(b, Table):
                if not b.rows:
                    body.append("<p><i>(no model ran this stage)</i></p>")
                    continue
                cap = f"<caption>{_inline_md(b.caption)}</caption>" if b.caption else ""
                head = "".join(f"<th>{_inline_md(h)}</th>" for h in b.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in b.rows)
                body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif isinstance(b, Figure):
                if b.path.exists():
                    data = base64.b64encode(b.path.read_bytes()).decode()
                    body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                                f"<figcaption>{_inline_md(b.caption)}</figcaption></figure>")  # fmt: skip
            else:
                body.append(f"<p>{_inline_md(b)}</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip


def write_report(sections: Sequence[Section], out_dir: str | Path, title: str = "routelab report") -> tuple[Path, Path]:
    """report.md (images linked relative to it) and report.html (self-contained), atomically."""
    out = Path(out_dir)
    md, page = out / "report.md", out / "report.html"
    write_text(md, render_markdown(sections, out, title) + "\n")
    write_text(page, render_html(sections, title))
    return md, page


# Per-model plot data → one long table per figure under plots/report/ (column `model` added), so that
# the `plots:` definitions in dvc.yaml name three fixed files and still grow with `pipeline.models`
# (dvc.yaml cannot expand a list in a plot definition). The templates in .dvc/plots/ colour by model.
CROSS_MODEL_PLOT_DATA = {
    "frontier.csv": "arr_sweep/frontier.csv",  # λ sweep: pct_stereotype vs ppl
    "r_by_layer.csv": "aals/r_by_layer.csv",  # AALS R(l)
    "layer_shift.csv": "profile/layer_shift.csv",  # routing shift JSD per layer
}


def write_cross_model_plot_data(models: Sequence[str], plots_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Concatenate each model's plot CSVs (those that exist) into ``out_dir``, one file per figure."""
    import polars as pl

    written = []
    for name, rel in CROSS_MODEL_PLOT_DATA.items():
        frames = [pl.read_csv(Path(plots_dir) / m / rel).with_columns(pl.lit(m).alias("model"))
                  for m in models if (Path(plots_dir) / m / rel).exists()]  # fmt: skip
        if not frames:
            continue
        table = pl.concat(frames, how="diagonal_relaxed")
        target = Path(out_dir) / name
        with atomic_path(target) as tmp:
            table.select("model", *[c for c in table.columns if c != "model"]).write_csv(tmp)
        written.append(target)
    return written


def check_html(page: str | Path, screenshot: str | Path, chromium: str | None = None) -> dict[str, Any]:
    """Open ``page`` in headless Chromium as a person would: every image must load, no request may
    leave the file, and a full-page screenshot is written. Returns what was seen; raises
    RoutelabError on a missing image or an external request."""
    from playwright.sync_api import sync_playwright  # needs the `test` extra and a system Chromium

    exe = chromium or os.environ.get("ROUTELAB_CHROMIUM") or "/usr/bin/chromium"
    if not Path(exe).exists():
        raise RoutelabError(f"Chromium not found at {exe}: install it (Debian: apt-get install chromium) "
                            "or set ROUTELAB_CHROMIUM to its path")  # fmt: skip
    page_path = Path(page).resolve()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])  # fmt: skip
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(page_path.as_uri(), wait_until="load")
            images = tab.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            tables = tab.evaluate("document.querySelectorAll('table').length")
            tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    external = [u for u in requests if not u.startswith(("file://", "data:"))]
    broken = [alt for alt, ok in images if not ok]
    if external:
        raise RoutelabError(f"{page}: the page requested {external[:3]}: a report must read offline")
    if broken:
        raise RoutelabError(f"{page}: {len(broken)} image(s) did not load, e.g. {broken[0][:80]!r}")
    return {"images": len(images), "tables": tables, "requests": len(requests)}
