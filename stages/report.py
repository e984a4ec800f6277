"""Stage `report`: the paper's tables for every model run and its figures, as Markdown and self-contained HTML.

Usage: python -m stages.report --metrics-dir metrics --plots-dir plots/models --out plots/report
Reads `pipeline.models` (the models whose rows appear) and writes <out>/report.md (images linked)
and <out>/report.html (images embedded, no external URL), and the cross-model plot data that the
`plots:` of dvc.yaml draw (<out>/frontier.csv, r_by_layer.csv, layer_shift.csv). Check the HTML as a
person would with `python -m pytest -m pipeline tests/test_ground_truth.py -k report` (headless
Chromium: every image loads, no request leaves the file, a screenshot is taken).
"""

from routelab.config import load_params
from routelab.report import build_report, write_cross_model_plot_data, write_report
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--metrics-dir", "--plots-dir", "--out")
    models = list((load_params(args.params).get("pipeline") or {}).get("models") or [])
    sections = build_report(models, args.metrics_dir, args.plots_dir)
    md, page = write_report(sections, args.out)
    plot_data = write_cross_model_plot_data(models, args.plots_dir, args.out)
    n_tables = sum(1 for s in sections for b in s.blocks if type(b).__name__ == "Table")
    return (f"report: {len(models)} models, {len(sections)} sections, {n_tables} tables → {md}, {page}; "
            f"{len(plot_data)} cross-model plot tables")


if __name__ == "__main__":
    run_stage(main, "report")
