"""Tests for routelab.interventions (engine, compare, runner) and the intervention modules' conditions.

A tiny OLMoE (tests/tiny_models.py) with its bench_baseline outputs written by the real stage
code (a CrowS-style file and a perplexity text in tmp): every number a stage reports is checked
against a separate computation — one condition per pass vs all in one pass, the fork vs no fork,
BH vs scipy over the whole family, condition-vs-condition tests vs compare_paired on the rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.stats

import tiny_models as tm
from routelab import ablation, alternatives, arr, masking
from routelab.bench_baseline import BenchBaselineParams, evaluate, load_benchmarks
from routelab.benchmarks import get_benchmark
from routelab.conditions import build
from routelab.interventions import Run, StageInputs, compare, compare_suite, execute, load_suite, results_table, score_conditions
from routelab.models import ModelSpec, load_model
from routelab.statistics import StatsParams, compare_paired

K, LAYERS = 8, [0, 1, 2]
W = tm.WORDS


def _sentence(rng: np.random.Generator, n: int) -> list[str]:
    return [W[i] for i in rng.integers(0, len(W), n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model, its benchmark files, bench_baseline's split files and baseline tables, and a φ profile."""
    root = tmp_path_factory.mktemp("interventions")
    path = tm.save_tiny_olmoe(root / "model", seed=5)
    rng = np.random.default_rng(0)
    with (root / "crows.csv").open("w", newline="") as fh:  # 40 minimal pairs in 10 clusters of 4
        w = csv.writer(fh)
        w.writerow(["", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "cluster"])
        for i in range(40):
            words = _sentence(rng, 6)
            a, b = rng.choice(["female", "male", "old", "young"], 2, replace=False)
            w.writerow([i, " ".join(["the", a, *words]), " ".join(["the", b, *words]),
                        "stereo" if i % 2 else "antistereo", ["gender", "age"][i % 2], f"u{i // 4}"])  # fmt: skip
    (root / "text.txt").write_text("\n".join(" ".join(_sentence(rng, 12)) for _ in range(12)) + "\n")
    spec = ModelSpec(path=str(path), dtype="float32", device="cpu", batch_size=8)
    bench = BenchBaselineParams(benchmarks=["crows_pairs", "perplexity"], n_bootstrap=50,
                                paths={"crows_pairs": str(root / "crows.csv"), "perplexity": str(root / "text.txt")})  # fmt: skip
    lm = load_model(spec)
    evaluate(lm, bench, load_benchmarks(bench, spec), root / "baseline", root / "splits", write_splits=True)
    prof = pl.DataFrame({"layer": np.repeat(LAYERS, K), "expert": np.tile(np.arange(K), len(LAYERS)),
                         "phi": rng.random(K * len(LAYERS)), "ard": rng.random(K * len(LAYERS))})  # fmt: skip
    stats = StatsParams(n_permutations=200, n_bootstrap=100)
    inputs = StageInputs("tiny", spec, bench, stats, {"arr": {"lambdas": [2.0, 8.0]}}, prof, K, 2)
    suite = load_suite(bench, spec, bench.benchmarks, "test", splits_dir=root / "splits", baseline_dir=root / "baseline")
    return {"root": root, "lm": lm, "inputs": inputs, "suite": suite, "bench": bench, "spec": spec}


def _run(setup, cfg, extra=None, split="test") -> Run:
    run = Run(setup["inputs"], cfg, extra or {}, setup["root"] / "out")
    run.suite = setup["suite"] if split == "test" else load_suite(
        setup["bench"], setup["spec"], setup["bench"].benchmarks, split, splits_dir=setup["root"] / "splits",
        baseline_dir=setup["root"] / "baseline")  # fmt: skip
    run.lm = setup["lm"]
    run.state.update(splits_dir=setup["root"] / "splits", baseline_dir=setup["root"] / "baseline",
                     benchmarks=setup["bench"].benchmarks)  # fmt: skip
    return run


# --------------------------------------------------------------------------------------------
# engine: C conditions in one pass = C separate passes; the fork = no fork
# --------------------------------------------------------------------------------------------


def _conditions(setup):
    ctx = setup["inputs"].context([1], seed=0)
    return [build("arr", ctx, lam=4.0), build("mask_top", ctx, n=2), build("arr_layer", ctx, lam=8.0, layer=2),
            build("flatten", ctx, lam=4.0)]  # fmt: skip


@pytest.mark.parametrize("fork", [True, False])
def test_conditions_in_one_pass_equal_separate_passes(setup, fork):
    conds = _conditions(setup)
    together = score_conditions(setup["lm"], conds, setup["suite"], progress=False, fork=fork)
    for c in conds:
        alone = score_conditions(setup["lm"], [c], setup["suite"], progress=False, fork=False)[c.name]
        for bench, rows in alone.items():
            for col in ("ll_more", "ll_less") if bench == "crows_pairs" else ("ll",):
                np.testing.assert_allclose(together[c.name][bench].sort("id")[col].to_numpy(),
                                           rows.sort("id")[col].to_numpy(), atol=1e-5)  # fmt: skip
    # flatten is a per-layer constant under softmax routing: exactly the baseline's scores
    np.testing.assert_allclose(together["flatten"]["crows_pairs"].sort("id")["ll_more"].to_numpy(),
                               setup["suite"].baseline["crows_pairs"].sort("id")["ll_more"].to_numpy(), atol=1e-5)  # fmt: skip
    moved = together["arr_4"]["crows_pairs"]["ll_more"].to_numpy() - together["flatten"]["crows_pairs"]["ll_more"].to_numpy()
    assert np.abs(moved).max() > 1e-3  # the edit does something on this model


# --------------------------------------------------------------------------------------------
# compare: the benchmark engine's numbers, paired tests, BH across the whole family
# --------------------------------------------------------------------------------------------


def test_compare_reads_the_benchmark_engines_numbers_and_pairs_by_item(setup):
    suite = setup["suite"]
    rows = score_conditions(setup["lm"], _conditions(setup)[:2], suite, progress=False)
    bench, _ = suite.benches["crows_pairs"]
    stats = setup["inputs"].stats
    c = compare(bench, suite.baseline["crows_pairs"], rows["mask_top"]["crows_pairs"], "pct_stereotype", stats,
                condition="mask_top")  # fmt: skip
    base, cond = suite.baseline["crows_pairs"].sort("id"), rows["mask_top"]["crows_pairs"].sort("id")
    from routelab.benchmarks import metrics_from_rows

    assert c.before == metrics_from_rows(bench, base)["pct_stereotype"]  # the bench_baseline number itself
    assert c.after == metrics_from_rows(bench, cond)["pct_stereotype"]
    want = compare_paired((base["stereo_pref"].to_numpy(),), (cond["stereo_pref"].to_numpy(),),
                          clusters=base["cluster"].to_numpy(), margin=0.05, seed=stats.seed,
                          n_permutations=stats.n_permutations, n_bootstrap=stats.n_bootstrap)  # fmt: skip
    assert (c.p, c.ci_low, c.ci_high, c.p_tost) == (want.p, want.ci_low, want.ci_high, want.p_tost)
    assert c.n_clusters == base["cluster"].n_unique() < c.n  # the file's clusters are the resampling units


def test_bh_runs_across_the_stage_family_and_pairs_compare_conditions_item_by_item(setup):
    suite, stats = setup["suite"], setup["inputs"].stats
    conds = _conditions(setup)[:2]
    rows = score_conditions(setup["lm"], conds, suite, progress=False)
    comps = compare_suite(suite, rows, stats, against=[("arr_4", "mask_top")])
    headline = {name: get_benchmark(name).headline for name in suite.benches}
    assert len(comps) == (2 + 1) * sum(len(h) for h in headline.values())  # 2 vs baseline + 1 pair
    assert [c.p_bh for c in comps] == pytest.approx(list(scipy.stats.false_discovery_control([c.p for c in comps])))
    pair = next(c for c in comps if c.reference == "mask_top" and c.metric == "pct_stereotype")
    direct = compare(suite.benches["crows_pairs"][0], rows["mask_top"]["crows_pairs"], rows["arr_4"]["crows_pairs"],
                     "pct_stereotype", stats, condition="arr_4", reference="mask_top")  # fmt: skip
    assert (pair.delta, pair.p) == (direct.delta, direct.p)
    table = results_table(comps)
    assert set(table) == {"arr_4", "mask_top", "arr_4_vs_mask_top"}
    assert set(table["arr_4"]) == {"crows", "ppl"} and set(table["arr_4"]["crows"]) == set(headline["crows_pairs"])
    entry = table["arr_4"]["crows"]["pct_stereotype"]
    assert entry["ci_low"] <= entry["delta"] <= entry["ci_high"] and "equivalent" in entry  # TOST where a margin exists
    assert "equivalent" not in table["arr_4"]["ppl"]["ppl"]  # no margin for perplexity


# --------------------------------------------------------------------------------------------
# The intervention modules: the conditions their docs say, run through the runner
# --------------------------------------------------------------------------------------------


def test_masking_builds_top_bottom_and_random_by_phi_and_compares_top_with_random(setup):
    run = _run(setup, masking.MaskingParams(n=3, draws=2))
    conds = masking.conditions(run)
    prof = setup["inputs"].profile.sort(["phi", "ard", "layer", "expert"], descending=[True, True, False, False])
    top = {(l, e) for l, e in prof.head(3).select("layer", "expert").iter_rows()}
    bottom = {(l, e) for l, e in prof.tail(3).select("layer", "expert").iter_rows()}
    masked = {c.name: {(l, e) for l, le in c.edit.layers.items() for e in le.masked} for c in conds}
    assert masked["mask_top"] == top and masked["mask_bottom"] == bottom
    assert [c.name for c in conds] == ["mask_top", "mask_bottom", "mask_random_0", "mask_random_1"]
    result, recs = execute(masking.STAGE, run)
    assert {r["reference"] for r in recs if r["condition"] == "mask_top"} == {"baseline", "mask_random"}
    assert set(result["results"]) == {"mask_top", "mask_bottom", "mask_random_0", "mask_random_1", "mask_random",
                                      "mask_top_vs_mask_random"}  # fmt: skip
    assert (setup["root"] / "out" / "mask_random" / "crows_pairs_test.parquet").is_file()  # the draws' average


def test_ablation_profiles_on_the_aals_layers_and_phi_vs_random(setup):
    run = _run(setup, ablation.AblationParams(lam=4.0, powers=[1.0, 4.0], top_k=[3], random_draws=2),
               extra={"aals": {"selected": [1, 2]}})
    conds = ablation.conditions(run)
    assert [c.name for c in conds] == ["flatten", "random_phi_0", "random_phi_1", "inverted", "power_1", "power_4", "top_3"]
    assert all(sorted(c.edit.layers) == [1, 2] for c in conds)
    phi = setup["inputs"].profile.filter(pl.col("layer").is_in([1, 2])).sort("layer", "expert")["phi"].to_numpy()
    p4 = -np.concatenate([next(c for c in conds if c.name == "power_4").edit.layers[l].bias.numpy() for l in (1, 2)])
    np.testing.assert_allclose(p4, 4.0 * phi**4 * phi.max() / phi.max() ** 4, rtol=1e-6)  # λ · rescaled φ^4
    assert ablation.against(run, conds) == [("power_1", "random_phi")]
    empty = _run(setup, ablation.AblationParams(), extra={"aals": {"selected": [], "reason": "every R(l) <= 0"}})
    assert ablation.conditions(empty) == [] and "AALS selected no layer" in empty.skipped["ablation"]


def test_arr_eval_skips_a_zero_lambda_star_and_says_why(setup):
    run = _run(setup, arr.ArrEvalParams(), extra={"sweep": {"lambda_star": 0.0, "layers": [1], "reason": "no λ helps"}})
    result, recs = execute(arr.EVAL, run)
    assert recs == [] and result["condition"] is None and "λ* = 0" in result["skipped"]["arr"]
    run = _run(setup, arr.ArrEvalParams(), extra={"sweep": {"lambda_star": 8.0, "layers": [1], "reason": "x"}})
    result, recs = execute(arr.EVAL, run)
    assert result["condition"] == "arr_8" and "skipped" not in result and len(recs) == 4  # crows 3 + ppl 1


def test_alternatives_edit_the_aals_layers_each_at_its_own_lambda_star(setup):
    root = setup["root"]
    pl.DataFrame({"layer": [0, 1, 1], "expert": [2, 3, 6], "score": [0.5, 0.4, 0.3], "selected": [True, True, True]}
                 ).write_parquet(root / "safex.parquet")  # fmt: skip
    sweep = {"lambda_star": 2.0, "layers": [1], "reason": "x"}
    run = _run(setup, alternatives.AlternativesParams(random_draws=2), extra={"sweep": sweep, "safex": str(root / "safex.parquet")})
    sweep_conds = alternatives.conditions(run)
    assert run.state["methods"] == {"safex": 2, "random_selection": 2}  # SAFEx's experts in layer 1 only: 2
    assert all(sorted(c.edit.layers) == [1] for c in sweep_conds)  # like for like: FSP's layers
    safex_2 = next(c for c in sweep_conds if c.name == "safex_2")
    assert {e for e in np.flatnonzero(safex_2.edit.layers[1].bias.numpy())} == {3, 6}
    result, recs = execute(alternatives.STAGE, run)
    sweeps = result["sweeps"]
    for method in ("safex", "random_selection"):  # each λ* by Eq. 7 on its own validation points
        pts = [arr.SweepPoint(p["lambda"], p["pct_stereotype"], p["ppl"]) for p in sweeps[method]["points"]]
        assert sweeps[method]["lambda_star"] == arr.pareto_lambda(pts, pts[0].ppl, 1.0)[0]
        assert [p.lam for p in pts] == [0.0, 2.0, 8.0]
    assert result["lambda_star"]["fsp"] == 2.0
    tested = {r["condition"] for r in recs if r["reference"] == "baseline"}
    expected = {"fsp", "prompt_prefix"} | {m for m in ("safex", "random_selection") if sweeps[m]["lambda_star"] > 0}
    assert tested - {"random_selection_0", "random_selection_1"} == expected
    assert {(r["condition"], r["reference"]) for r in recs if r["reference"] != "baseline"} == {
        ("fsp", m) for m in ("safex", "random_selection") if sweeps[m]["lambda_star"] > 0}


def test_an_empty_selection_is_a_result_not_an_error(setup):
    root = setup["root"]
    pl.DataFrame({"layer": [0], "expert": [2], "score": [0.5], "selected": [True]}).write_parquet(root / "outside.parquet")
    run = _run(setup, alternatives.AlternativesParams(conditions=["fsp", "safex", "random_selection"]),
               extra={"sweep": {"lambda_star": 2.0, "layers": [1], "reason": "x"}, "safex": str(root / "outside.parquet")})
    result, recs = execute(alternatives.STAGE, run)
    assert set(result["skipped"]) == {"safex", "random_selection"}
    assert "SAFEx selected no expert in layers [1]" in result["skipped"]["safex"]
    assert {r["condition"] for r in recs} == {"fsp"}
