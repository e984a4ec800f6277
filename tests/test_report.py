"""The report: tables filled from metrics files, a self-contained HTML page checked in Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from routelab.errors import RoutelabError
from routelab.report import build_report, check_html, render_html, write_report

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201e2219bc00000000049454e44ae426082"
)


def _fake(tmp_path: Path) -> tuple[Path, Path]:
    metrics, plots = tmp_path / "metrics", tmp_path / "plots" / "models"
    res = {"crows": {"pct_stereotype": {"before": 0.8, "after": 0.6, "delta": -0.2, "p_bh": 0.001, "ci_low": -0.25,
                                        "ci_high": -0.15, "equivalent": False, "p_tost": 0.9}},
           "tqa": {"mc1": {"before": 0.7, "after": 0.68, "delta": -0.02, "p_bh": 0.4, "ci_low": -0.05, "ci_high": 0.01}}}
    null = {"crows": {"pct_stereotype": {"before": 0.5, "after": 0.5, "delta": 0.001, "p_bh": 0.9, "ci_low": -0.01,
                                         "ci_high": 0.012, "equivalent": True, "p_tost": 0.001}}}
    (metrics / "a").mkdir(parents=True)
    (metrics / "a" / "arr_eval.json").write_text(json.dumps({"lambda_star": 2.0, "layers": [1], "condition": "arr_2",
                                                             "results": {"arr_2": res}}))
    (metrics / "a" / "masking.json").write_text(json.dumps({"results": {"mask_top": res, "mask_bottom": null},
                                                            "skipped": {"mask_random": "a reason"}}))
    for rel in ("profile/phi_heatmap.png", "aals/r_by_layer.png"):
        (plots / "a" / rel).parent.mkdir(parents=True, exist_ok=True)
        (plots / "a" / rel).write_bytes(PNG)
    return metrics, plots


def test_tables_are_filled_from_the_metrics_and_missing_stages_show_dashes(tmp_path):
    metrics, plots = _fake(tmp_path)
    sections = build_report(["a", "b"], metrics, plots)
    t6 = next(s for s in sections if s.title.startswith("Table 6")).blocks[0]
    assert t6.rows == [["a", "2.00", "[1]", "**0.800 → 0.600 (Δ -0.200 [-0.250, -0.150], p_BH 0.001)**", "—",
                        "0.700 → 0.680 (Δ -0.020 [-0.050, +0.010], p_BH 0.400)", "—"]]
    masking = next(s for s in sections if s.title.startswith("Table 2"))
    assert masking.blocks[0].rows == [["a", "top-n φ", "**-0.200 (0.001)**", "—", "-0.020 (0.400)", "—"],
                                      ["a", "bottom-n φ", "+0.001 (0.900) ≈", "—", "—", "—"]]  # ≈: TOST-equivalent
    assert "a: mask_random skipped — a reason" in masking.blocks  # a skipped condition is said, not silent
    md, page = write_report(sections, tmp_path / "report")
    text = md.read_text()
    assert "| a | 2.00 | [1] |" in text and "](../plots/models/a/profile/phi_heatmap.png)" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2 and "http" not in html.replace("http-equiv", "")


@pytest.fixture
def chromium():
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.fail("Chromium is needed for the report check: apt-get install chromium (see the README set-up)")
    return exe


def test_the_page_renders_offline_with_every_image(tmp_path, chromium):
    metrics, plots = _fake(tmp_path)
    _, page = write_report(build_report(["a"], metrics, plots), tmp_path / "report")
    seen = check_html(page, tmp_path / "shot.png", chromium)
    assert seen["images"] == 2 and seen["tables"] >= 2 and (tmp_path / "shot.png").stat().st_size > 1000


def test_the_check_fails_on_an_external_request_and_on_a_broken_image(tmp_path, chromium):
    bad = tmp_path / "bad.html"
    bad.write_text(render_html([], "x").replace("</body>", '<img alt="remote" src="http://example.invalid/a.png"></body>'))
    with pytest.raises(RoutelabError, match="requested .*example.invalid"):
        check_html(bad, tmp_path / "s.png", chromium)
    broken = tmp_path / "broken.html"
    broken.write_text(render_html([], "x").replace("</body>", '<img alt="gone" src="missing.png"></body>'))
    with pytest.raises(RoutelabError, match="did not load"):
        check_html(broken, tmp_path / "s.png", chromium)


def test_cross_model_plot_data_is_one_long_table_per_figure_with_a_model_column(tmp_path):
    from routelab.report import CROSS_MODEL_PLOT_DATA, write_cross_model_plot_data

    plots = tmp_path / "plots" / "models"
    for model, rs in (("a", "1.5,2.5"), ("b", "7.0,-1.0")):
        f = plots / model / "aals" / "r_by_layer.csv"
        f.parent.mkdir(parents=True)
        r0, r1 = rs.split(",")
        f.write_text(f"layer,R\n0,{r0}\n1,{r1}\n")
    (plots / "c" / "arr_sweep").mkdir(parents=True)
    (plots / "c" / "arr_sweep" / "frontier.csv").write_text("\n")  # c's λ sweep was skipped (an empty table)
    written = write_cross_model_plot_data(["a", "b", "c"], plots, tmp_path / "report")  # c ran nothing else
    by_name = {p.name: p for p in written}
    assert sorted(by_name) == sorted(n for f in CROSS_MODEL_PLOT_DATA for n in (f, f.replace(".csv", ".png")))
    r = by_name["r_by_layer.csv"]
    assert r.read_text().splitlines() == ["model,layer,R", "a,0,1.5", "a,1,2.5", "b,0,7.0", "b,1,-1.0"]
    png = by_name["r_by_layer.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000  # the figure
    # no model has the others' data: their tables hold the header only and their figures say so
    # (dvc.yaml declares every figure, so each is written)
    assert by_name["frontier.csv"].read_text() == "model\n" and by_name["layer_shift.csv"].read_text() == "model\n"
    assert by_name["frontier.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(CROSS_MODEL_PLOT_DATA) == {"frontier.csv", "r_by_layer.csv", "layer_shift.csv"}


def test_dvc_plots_are_the_report_figures_so_they_render_offline():
    """dvc.yaml's plots are images the report stage draws (no Vega: its HTML loads a CDN)."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    from routelab.report import CROSS_MODEL_PLOT_DATA

    plots = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    assert plots == [f"plots/report/{Path(name).with_suffix('.png').name}" for name in CROSS_MODEL_PLOT_DATA]