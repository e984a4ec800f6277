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


def _entry(res: dict | None, key: str, metric: str) -> dict | None:
    """One comparison of a condition's results table: results[cond][benchmark key][metric]."""
    return ((res or {}).get(key) or {}).get(metric)


def _sig(r: dict, alpha: float = 0.05) -> bool:
    return r.get("p_bh") is not None and r["p_bh"] < alpha


def _cmp(res: dict | None, key: str, metric: str, alpha: float = 0.05) -> str:
    """before → after (Δ [95 % CI], p_BH), bold when p_BH < alpha; "≈" when TOST shows equivalence."""
    r = _entry(res, key, metric)
    if r is None:
        return "—"
    eq = " ≈" if r.get("equivalent") else ""
    text = (f"{_f(r['before'])} → {_f(r['after'])} (Δ {r['delta']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
            f"p_BH {_p(r['p_bh'])}){eq}")  # fmt: skip
    return _bold_if(text, _sig(r, alpha))


def _delta(res: dict | None, key: str, metric: str, alpha: float = 0.05) -> str:
    r = _entry(res, key, metric)
    if r is None:
        return "—"
    eq = " ≈" if r.get("equivalent") else ""
    return _bold_if(f"{r['delta']:+.3f} ({_p(r['p_bh'])}){eq}", _sig(r, alpha))


def _skipped(models, m, stage: str) -> list[str]:
    """One line per condition a stage skipped, with the reason (an empty selection, λ* = 0, …)."""
    return [f"{name}: {cond} skipped — {why}" for name in models for cond, why in ((m(name, stage) or {}).get("skipped") or {}).items()]


# --------------------------------------------------------------------------------------------
# The report's sections (each reads one or two stages' metrics for every model)
# --------------------------------------------------------------------------------------------

LEGEND = ("Δ [95 % CI] (p_BH): paired permutation test, Benjamini–Hochberg across the stage; **bold**: p_BH < 0.05; "
          "≈: equivalent to no change within ±margin (TOST, statistics.equivalence_margins). crows after: the "
          "preference on the tokens after the differing words only (docs/method.md §8).")  # fmt: skip


def _models_section(models, m) -> Section:
    rows = []
    for name in models:
        tb, prof, base = m(name, "testbed"), m(name, "profile"), m(name, "bench_baseline")
        crows = (base or {}).get("crows_pairs", {}).get("test", {})
        tqa = (base or {}).get("truthfulqa", {}).get("test", {})
        ppl = (base or {}).get("perplexity", {}).get("test", {})
        shape = f"{prof['n_layers']} × {prof['n_experts']}, top-{prof['top_k']}" if prof else "—"
        rows.append([name, _f(tb.get("strength")) if tb else "—", shape, _f(crows.get("pct_stereotype")),
                     _f(crows.get("pct_stereotype_after")), _f(tqa.get("mc1")), _f(ppl.get("ppl"))])  # fmt: skip
    return Section("Models", "Each model of `pipeline.models`, its routing shape and its baseline on the test split "
                   "(testbeds: the stereotype strength of the corpus).",
                   [Table(["model", "strength", "MoE layers × experts", "CrowS preference", "… on the tokens after",
                           "fact/TQA MC1", "perplexity"], rows)])  # fmt: skip


def _ground_truth_section(models, m) -> Section | None:
    rows = []
    for name in models:
        g = m("ground_truth", name)  # metrics/ground_truth/<m>.json (stage summary)
        for check, v in ((g or {}).get("verdicts") or {}).items():
            rows.append([name, check, "holds" if v["holds"] else "**FAILS**", _f(v["value"]), v["detail"]])
    if not rows:
        return None
    return Section("Ground truth (testbeds)", "Each testbed variant's claims checked on this run's outputs "
                   "(routelab.testbed.verdicts; docs/method.md §10). A claim that fails here is a finding about the "
                   "pipeline, not the model.", [Table(["model", "check", "verdict", "statistic", "detail"], rows)])


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
        rows.append([name, r, str(a["selected"] or "none"), _f(s["lambda_star"], 2) if s else "—",
                     s["reason"] if s else "—"])  # fmt: skip
    blocks.append(Table(["model", "R(l) per layer", "AALS layers", "λ*", "why λ*"], rows,
                        "AALS R(l) = Δbias/(|ΔPPL| + 1e-6) (Eq. 5) and the Pareto λ* (Eq. 7)."))
    blocks += _skipped(models, m, "aals") + _skipped(models, m, "arr_sweep")
    for name in models:
        blocks.append(figs(name, "aals/r_by_layer.png", f"{name}: R(l) of each one-layer probe (red: selected). A tall "
                           "bar with a tiny ΔPPL can be noise: compare with the probe's p_BH in aals.json."))
        blocks.append(figs(name, "arr_sweep/frontier.png", f"{name}: bias–utility frontier of the λ sweep; the star is "
                           "λ*, the dashed line the PPL budget. Look for how far the preference moves before the budget."))
    return Section("AALS and λ*", "FARE Stage 3 on the validation split (docs/method.md §3).", blocks)


def _table6(models, m) -> Section:
    rows = []
    for name in models:
        t = m(name, "arr_eval")
        if t and t.get("condition"):
            res = t["results"][t["condition"]]
            rows.append([name, _f(t["lambda_star"], 2), str(t["layers"]), _cmp(res, "crows", "pct_stereotype"),
                         _cmp(res, "crows", "pct_stereotype_after"), _cmp(res, "tqa", "mc1"), _cmp(res, "ppl", "ppl")])  # fmt: skip
    blocks: list[Any] = [Table(["model", "λ*", "layers", "CrowS", "CrowS after", "TQA / fact MC1", "perplexity"], rows)]
    return Section("Table 6 — ARR at λ* on the test split", LEGEND, blocks + _skipped(models, m, "arr_eval"))


def _condition_table(title, intro, stage, models, m, conditions: Sequence[tuple[str, str]], figs, fig=None) -> Section:
    rows = []
    for name in models:
        res = (m(name, stage) or {}).get("results")
        if not res:
            continue
        for key, label in conditions:
            if key in res:
                r = res[key]
                rows.append([name, label, _delta(r, "crows", "pct_stereotype"), _delta(r, "crows", "pct_stereotype_after"),
                             _delta(r, "tqa", "mc1"), _delta(r, "ppl", "ppl")])  # fmt: skip
    blocks: list[Any] = [Table(["model", "condition", "ΔCrowS (p_BH)", "ΔCrowS after", "ΔTQA (p_BH)", "ΔPPL (p_BH)"], rows)]
    blocks += _skipped(models, m, stage)
    if fig:
        blocks += [figs(name, fig[0], fig[1].format(model=name)) for name in models]
    return Section(title, intro + " " + LEGEND, blocks)


def _table7(models, m) -> Section:
    rows = []
    for name in models:
        g = m(name, "generation")
        if not g:
            continue
        for cond, res in g["results"].items():
            for proto, metrics in res.items():
                for metric, r in metrics.items():
                    rows.append([name, proto, cond, metric, _f(r["before"]), _f(r["after"]),
                                 _bold_if(f"{r['delta']:+.3f}", _sig(r)) + (" ≈" if r.get("equivalent") else ""),
                                 f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]", _p(r["p_bh"])])  # fmt: skip
    return Section("Table 7 — generation transfer", "Decoded text under each condition vs the baseline, paired over "
                   "prompts (samples averaged per prompt). " + LEGEND,
                   [Table(["model", "protocol", "condition", "metric", "before", "after", "Δ", "95 % CI", "p_BH"], rows)]
                   + _skipped(models, m, "generation"))  # fmt: skip


def _steer_section(models, m) -> Section:
    rows = []
    for name in models:
        s = m(name, "steer")
        if s:
            res = s["results"].get("steer")
            rows.append([name, s["behaviour"], str(s["n_pairs"]), ", ".join(s["selected"]["deactivate"]) or "—",
                         ", ".join(s["selected"]["activate"]) or "—", _cmp(res, "crows", "pct_stereotype"),
                         _cmp(res, "tqa", "mc1")])  # fmt: skip
    return Section("SteerMoE", "Experts detected from paired inputs by activation-rate difference and forced off "
                   "(or on) in log-softmax space (docs/method.md §6), test split. " + LEGEND,
                   [Table(["model", "behaviour", "pairs", "deactivated", "activated", "CrowS", "TQA / fact MC1"], rows)]
                   + _skipped(models, m, "steer"))  # fmt: skip


def _alternatives_section(models, m, figs) -> Section:
    sec = _condition_table(
        "Table 8 — alternatives, each at its own λ*", "FSP, SAFEx-style and random expert selection, each with ARR on "
        "the AALS layers at the λ* of its own sweep, and prompt debiasing (test split); "
        "fsp vs …: the same items compared under FSP and under the alternative.", "alternatives", models, m,
        [("fsp", "FARE FSP"), ("safex", "SAFEx"), ("random_selection", "random (avg)"), ("prompt_prefix", "prompt debiasing"),
         ("fsp_vs_safex", "FSP vs SAFEx"), ("fsp_vs_random_selection", "FSP vs random")], figs)  # fmt: skip
    lams = [[name, *(_f((a.get("lambda_star") or {}).get(k), 2) for k in ("fsp", "safex", "random_selection"))]
            for name in models if (a := m(name, "alternatives"))]  # fmt: skip
    sec.blocks.insert(1, Table(["model", "λ* FSP", "λ* SAFEx", "λ* random"], lams, "Each method's λ* (FARE Eq. 7 on the validation split)."))
    return sec


def build_report(models: Sequence[str], metrics_dir: str | Path, plots_dir: str | Path) -> list[Section]:
    """The report's sections for ``models`` from metrics/<m>/*.json and plots/models/<m>/."""
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    if not models:
        raise RoutelabError("report: no models given; set pipeline.models")
    m: Callable[[str, str], dict | None] = lambda name, stage: _read(metrics_dir, name, stage)  # noqa: E731

    def figs(name: str, rel: str, caption: str) -> Figure:
        return Figure(plots_dir / name / rel, caption)

    sections = [
        _models_section(models, m),
        _ground_truth_section(models, m),
        _prompts_section(models, m),
        _profile_section(models, m, figs),
        _aals_section(models, m, figs),
        _table6(models, m),
        _condition_table("Table 2 — group masking", "The top-n, bottom-n and random-n experts by φ switched off "
                         "(test split); random-n is averaged over draws; top vs random compares them item by item.",
                         "masking", models, m,
                         [("mask_top", "top-n φ"), ("mask_bottom", "bottom-n φ"), ("mask_random", "random-n (avg)"),
                          ("mask_top_vs_mask_random", "top-n vs random-n")],
                         figs, ("masking/masking.png", "{model}: Δ with 95 % CIs per masking condition (red: p_BH < 0.05).")),
        _condition_table("Table 4 — synthetic ablation", "ARR at λ = `ablation.lam` (the paper: 1) on the AALS layers "
                         "with ablated profiles, each rescaled to φ's maximum (test split). 'flatten' is a per-layer "
                         "constant: exactly no effect on softmax routers.",
                         "ablation", models, m,
                         [("flatten", "flatten"), ("random_phi", "random φ (avg)"), ("inverted", "inverted"),
                          ("power_0p25", "α = 0.25"), ("power_0p5", "α = 0.5"), ("power_1", "α = 1 (FSP)"),
                          ("power_2", "α = 2"), ("power_4", "α = 4"), ("top_5", "top-5"), ("top_10", "top-10"),
                          ("top_25", "top-25"), ("top_50", "top-50"), ("top_100", "top-100"),
                          ("power_1_vs_random_phi", "FSP vs random φ")],
                         figs, ("ablation/ablation.png", "{model}: Δ with 95 % CIs per ablation profile.")),
        _alternatives_section(models, m, figs),
        _steer_section(models, m),
        _table7(models, m),
    ]  # fmt: skip
    return [s for s in sections if s is not None]


# --------------------------------------------------------------------------------------------
# The headline row of one model (metrics/summary/<m>.json: what `dvc metrics show` lists)
# --------------------------------------------------------------------------------------------

SUMMARY_KEYS = {  # key -> what it is; every model's file has exactly these keys (None where a stage did not run)
    "pref": "CrowS preference, baseline, test split",
    "lambda": "λ* of the ARR sweep (0: ARR changes nothing)",
    "arr": "Δ preference under ARR at λ* (test)",
    "mask": "Δ preference with the top-n experts by φ off (test)",
    "steer": "Δ preference under SteerMoE (test)",
    "mc1": "fact / TruthfulQA MC1, baseline, test split",
    "ppl": "perplexity, baseline, test split",
    "checks": "ground-truth checks that hold, k/n (testbeds only)",
}


def summary_row(model: str, metrics_dir: str | Path, verdicts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The few numbers of one model that `dvc metrics show` lists (SUMMARY_KEYS), rounded to 4 digits.

    Read from the stages' own files; the full records stay in metrics/<m>/<stage>.json and
    data/interventions/<m>/<stage>/comparisons.json."""
    m = lambda stage: _read(Path(metrics_dir), model, stage) or {}  # noqa: E731

    def delta(stage: str, cond: str | None) -> float | None:
        r = _entry((m(stage).get("results") or {}).get(cond) if cond else None, "crows", "pct_stereotype")
        return None if r is None else round(r["delta"], 4)

    base = m("bench_baseline")
    test = lambda bench, metric: base.get(bench, {}).get("test", {}).get(metric)  # noqa: E731
    rnd = lambda x: None if x is None else round(float(x), 4)  # noqa: E731
    checks = None if not verdicts or not verdicts.get("checks") else f"{verdicts['holds']}/{verdicts['checks']}"
    return {
        "pref": rnd(test("crows_pairs", "pct_stereotype")),
        "lambda": m("arr_sweep").get("lambda_star"),
        "arr": delta("arr_eval", m("arr_eval").get("condition")),
        "mask": delta("masking", "mask_top"),
        "steer": delta("steer", "steer"),
        "mc1": rnd(test("truthfulqa", "mc1")),
        "ppl": rnd(test("perplexity", "ppl")),
        "checks": checks,
    }


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
CROSS_MODEL_PLOT_DATA = {  # long table -> (per-model CSV, x, y, title, points) of its figure
    "frontier.csv": ("arr_sweep/frontier.csv", "ppl", "pct_stereotype", "λ frontier (ARR sweep, validation)", True),
    "r_by_layer.csv": ("aals/r_by_layer.csv", "layer", "R", "AALS R(l) per layer (Eq. 5)", False),
    "layer_shift.csv": ("profile/layer_shift.csv", "layer", "layer_jsd", "routing shift per layer (JSD, bits)", False),
}


def _csv_or_none(path: Path):
    """The table of a plot CSV, or None where the file is missing or empty (a skipped step)."""
    import polars as pl

    try:
        return pl.read_csv(path) if path.is_file() else None
    except pl.exceptions.NoDataError:
        return None


def write_cross_model_plot_data(models: Sequence[str], plots_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Concatenate each model's plot CSVs (those that exist) into ``out_dir``, one file per figure."""
    import polars as pl

    from routelab import plots

    written = []
    for name, (rel, x, y, title, points) in CROSS_MODEL_PLOT_DATA.items():
        # an empty CSV is a skipped step of that model (e.g. no λ sweep when AALS selected no layer)
        paths = {m: Path(plots_dir) / m / rel for m in models}
        frames = [t.with_columns(pl.lit(m).alias("model")) for m, f in paths.items() if (t := _csv_or_none(f)) is not None]
        target = Path(out_dir) / name
        if not frames:  # still written: dvc.yaml declares these figures; the image says there is nothing to draw
            with atomic_path(target) as tmp:
                Path(tmp).write_text("model\n")
            written += [target, plots.nothing(target.with_suffix(".png"), title, f"no model of {list(models)} has {rel}")]
            continue
        table = pl.concat(frames, how="diagonal_relaxed")
        with atomic_path(target) as tmp:
            table.select("model", *[c for c in table.columns if c != "model"]).write_csv(tmp)
        written += [target, plots.by_model(table, x, y, target.with_suffix(".png"), title, points=points)]
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
