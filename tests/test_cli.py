"""The `routelab bench` command on a saved tiny model and a slice of the real CrowS-Pairs file,
the order of failures without the Hub (benchmark inputs are read before any model loads, in
`routelab bench` and in the bench_baseline stage), the help texts, bench's default data found
from any folder, both outputs or neither, and p-values in summary lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

import tiny_models as tm
from routelab.benchmarks import get_benchmark, resolve_source
from routelab.cli import main as cli_main
from routelab.io import atomic_paths
from routelab.stage import format_p

ROOT = Path(__file__).resolve().parents[1]
GHOST = "no-such-org/no-such-moe-model"  # a Hub id that does not exist


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
    assert metrics["source"] == str(data) and metrics["n_items"] == 40


def test_bench_unknown_benchmark_is_a_clean_error(tmp_path, capsys):
    assert cli_main(["bench", "--model", "x", "--benchmark", "truthful_qa", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'truthfulqa'?" in err and not (tmp_path / "m.json").exists()


def _offline_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a command with the Hub unreachable: offline mode and an empty Hugging Face cache."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bench_without_hub_fails_on_the_benchmark_before_the_model(tmp_path):
    """perplexity has no local default: its Hub source fails first, not the non-existent model."""
    res = _offline_run(["routelab.cli", "bench", "--model", GHOST, "--benchmark", "perplexity",
                        "--out", str(tmp_path / "m.json")], tmp_path)
    assert res.returncode == 2, res.stderr
    assert "perplexity: could not load Salesforce/wikitext" in res.stderr
    assert "bench_baseline.paths.perplexity" in res.stderr and "--data" in res.stderr
    assert GHOST not in res.stderr and not (tmp_path / "m.json").exists()


def test_stage_without_hub_fails_on_the_benchmark_before_the_model(tmp_path, shared_dir):
    params = {
        "models": {"ghost": {"path": GHOST}},
        "bench_baseline": {
            "benchmarks": ["crows_pairs", "perplexity"],  # crows_pairs loads (local), perplexity needs the Hub
            "paths": {"crows_pairs": str(shared_dir / "benchmarks/crows_pairs/crows_pairs_anonymized.csv")},
        },
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    res = _offline_run(["stages.bench_baseline", "--model", "ghost", "--out", str(tmp_path / "out"),
                        "--splits", str(tmp_path / "splits"), "--metrics", str(tmp_path / "m.json"),
                        "--params", str(tmp_path / "params.yaml")], tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("stage bench_baseline: error: perplexity: could not load Salesforce/wikitext"), res.stderr
    assert "bench_baseline.paths.perplexity" in lines[-1]
    assert GHOST not in res.stderr and "cannot load the config" not in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_help_lists_each_command_with_its_purpose_and_an_example(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for name, purpose in (("extract", "record the router logits and top-k of every MoE layer"),
                          ("bench", "score one benchmark by log-likelihood"),
                          ("check-params", "check every section and key of params.yaml"),
                          ("seeds", "summarise the testbed seeds run as DVC experiments")):  # fmt: skip
        assert f"    {name:<12}  {purpose}" in out, out  # one line each, purposes in one column
    assert ("routelab extract --model data/models/diffuse --prompts data/prompts/diffuse.parquet "
            "--out routing.parquet") in out
    # The examples name the pipeline's own paths of a model params.yaml knows (the old default
    # `testbed` was split into control, diffuse, routed and routed_null).
    known = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    named = re.findall(r"data/(?:models|prompts|profiles)/(\w+)", out)
    assert named and all(m in known for m in named), named


@pytest.mark.parametrize("command, shown", [
    ("extract", ["(default: 512)", "(default: 16)", "(default: auto)", "example:"]),
    ("bench", ["(default: 0)", "(default: 16)", "(default: auto)", "example:"]),
])
def test_each_command_shows_its_defaults(command, shown, capsys):
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    for text in shown:
        assert text in out, text
    assert "(default: None)" not in out and "(default: False)" not in out


def test_bench_default_data_is_found_from_any_folder(monkeypatch, tmp_path, shared_dir):
    monkeypatch.chdir(tmp_path)  # not the project root
    source = resolve_source(get_benchmark("crows_pairs"))
    assert source.is_absolute() and source.is_file()
    assert source.resolve() == (shared_dir / "benchmarks/crows_pairs/crows_pairs_anonymized.csv").resolve()


def test_outputs_are_written_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "m.json", tmp_path / "items.parquet"
    with pytest.raises(RuntimeError):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_text("{}")
            raise RuntimeError("the second output fails")
    assert sorted(tmp_path.iterdir()) == []  # neither output, no temporary file
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("{}")
        tb.write_text("x")
    assert a.read_text() == "{}" and b.read_text() == "x"


@pytest.mark.parametrize("p, shown", [
    (0.000999000999000999, "0.001"),  # 1/(1 + 1000): the smallest permutation p of 1,000 draws
    (0.0234, "0.023"),
    (0.5, "0.500"),
    (9.999000099990002e-05, "0.0001"),  # 1/(1 + 10,000)
    (4.2e-05, "4.2e-05"),
    (None, "n/a"),
    (float("nan"), "n/a"),
])
def test_p_values_in_summary_lines(p, shown):
    assert format_p(p) == shown
