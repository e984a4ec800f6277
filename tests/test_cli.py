"""The `routelab bench` command on a saved tiny model and a slice of the real CrowS-Pairs file."""

from __future__ import annotations

import json

import polars as pl

import tiny_models as tm
from routelab.cli import main as cli_main


def test_bench_crows_pairs_writes_metrics_and_items(tmp_path, shared_dir, capsys):
    model_dir = tm.save_tiny_olmoe(tmp_path / "model")
    src = (shared_dir / "benchmarks/crows_pairs/crows_pairs_anonymized.csv").read_text().splitlines()
    data = tmp_path / "crows.csv"
    data.write_text("\n".join(src[:41]) + "\n")  # header + 40 pairs, original format
    out, items = tmp_path / "m.json", tmp_path / "items.parquet"
    assert cli_main(["bench", "--model", str(model_dir), "--benchmark", "crows_pairs", "--data", str(data),
                     "--out", str(out), "--items", str(items), "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    df = pl.read_parquet(items)
    assert df.height == 40 and {"id", "ll_more", "ll_less"} <= set(df.columns)
    assert metrics["pct_stereotype"] == (df["ll_more"] > df["ll_less"]).mean()
    assert abs(metrics["likelihood_diff"] - (df["ll_more"] - df["ll_less"]).abs().mean()) < 1e-9
    lo, hi = metrics["ci95"]["pct_stereotype"]
    assert lo <= metrics["pct_stereotype"] <= hi


def test_bench_unknown_benchmark_is_a_clean_error(tmp_path, capsys):
    assert cli_main(["bench", "--model", "x", "--benchmark", "truthful_qa", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'truthfulqa'?" in err and not (tmp_path / "m.json").exists()
