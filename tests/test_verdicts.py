"""Tests for routelab.testbed.verdicts: each ground-truth check holds where its claim is true and
fails where it is not, on hand-made outputs (the pipeline's own outputs: tests/test_ground_truth.py)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from routelab.errors import RoutelabError
from routelab.testbed import verdicts as V


def _cmp(condition, benchmark, metric, delta, p_bh, before=0.8, reference="baseline", equivalent=None):
    return {"condition": condition, "benchmark": benchmark, "metric": metric, "reference": reference,
            "before": before, "after": before + delta, "delta": delta, "p_bh": p_bh, "equivalent": equivalent}  # fmt: skip


def outputs(tmp_path: Path, model="routed", plant=None, **over) -> V.ModelOutputs:
    d = tmp_path / "models" / model
    d.mkdir(parents=True, exist_ok=True)
    if plant is not None:
        (d / "plant.json").write_text(json.dumps(plant))
    return V.ModelOutputs(model, tmp_path / "m", tmp_path / "i", tmp_path / "g", tmp_path / "p.parquet", d,
                          overrides=over)  # fmt: skip


def test_stereotype_and_no_stereotype_read_the_confidence_interval(tmp_path):
    biased = outputs(tmp_path, **{"metrics:testbed": {"crows_pref": 0.83, "crows_ci_low": 0.81, "crows_ci_high": 0.85}})
    null = outputs(tmp_path, **{"metrics:testbed": {"crows_pref": 0.50, "crows_ci_low": 0.47, "crows_ci_high": 0.53}})
    wide = outputs(tmp_path, **{"metrics:testbed": {"crows_pref": 0.50, "crows_ci_low": 0.40, "crows_ci_high": 0.60}})
    assert V.stereotype_learned(biased).holds and not V.stereotype_learned(null).holds
    assert V.no_stereotype(null).holds and not V.no_stereotype(biased).holds
    assert not V.no_stereotype(wide).holds  # not biased, but not shown unbiased either (too few pairs)


def test_scorer_agreement_allows_two_float_near_ties_and_no_more(tmp_path):
    bench = {"crows_pairs": {"validation": {"pct_stereotype": 0.5, "n": 720}, "test": {"pct_stereotype": 0.6, "n": 720}}}
    same = {"crows_pref": 0.55, "n_pairs": 1440}
    assert V.scorer_agrees(outputs(tmp_path, **{"metrics:bench_baseline": bench, "metrics:testbed": same})).holds
    off = {"crows_pref": 0.55 + 3 / 1440, "n_pairs": 1440}  # three pairs decided differently
    assert not V.scorer_agrees(outputs(tmp_path, **{"metrics:bench_baseline": bench, "metrics:testbed": off})).holds


def test_plant_checks_read_plant_json_and_the_routing_record(tmp_path):
    units = ["model.layers.1.mlp.gate.weight[2]", "model.layers.1.mlp.experts.2.up_proj.weight"]
    tb = {"designated_descriptor_rate": 1.0, "heldout_ppl": 3.81, "base_heldout_ppl": 3.80, "first_token_nll": 0.03,
          "base_first_token_nll": 0.03, "max_descriptor_rate_change": 0.95}  # fmt: skip
    routed = outputs(tmp_path, plant={"designated": {"1": [2]}, "changed_units": units}, **{"metrics:testbed": tb})
    assert V.plant_only_designated(routed).holds and V.plant_kept_utility(routed).holds
    assert not V.routing_untouched(routed).holds  # its router rows changed
    stray = outputs(tmp_path, model="x", plant={"designated": {"1": [2]}, "changed_units": units + ["model.norm.weight",
                    "model.layers.0.mlp.gate.weight[5]"]}, **{"metrics:testbed": tb})  # fmt: skip
    assert not V.plant_only_designated(stray).holds
    # the route swap as testbed_plant writes it (statistics.compare_paired: Δ, 95 % CI, p, TOST at the margin)
    kept = {"pref_own": 0.92, "pref_donor_routing": 0.91, "delta": -0.01, "ci_low": -0.03, "ci_high": 0.01, "p": 0.2,
            "p_tost": 0.001, "equivalent": True, "margin": 0.1, "n_pairs": 1440}  # fmt: skip
    frozen = outputs(tmp_path, model="nonrouted", plant={"designated": {}, "changed_units": ["model.norm.weight"]},
                     **{"metrics:testbed": {**tb, "max_descriptor_rate_change": 0.125, "control_routing": kept}})  # fmt: skip
    # a few descriptor tokens moved (reported), but the control's routing keeps the bias: holds
    assert V.routing_untouched(frozen).holds and not V.plant_only_designated(frozen).holds
    carried = {**kept, "pref_donor_routing": 0.6, "delta": -0.32, "ci_low": -0.36, "ci_high": -0.28, "p": 1e-4,
               "p_tost": 1.0, "equivalent": False}  # fmt: skip
    assert not V.routing_untouched(outputs(tmp_path, model="nonrouted", plant={"designated": {}, "changed_units": []},
                                           **{"metrics:testbed": {**tb, "control_routing": carried}})).holds  # fmt: skip
    unsure = {**kept, "delta": -0.05, "ci_low": -0.12, "ci_high": 0.02, "p_tost": 0.09, "equivalent": False}  # TOST fails
    assert not V.routing_untouched(outputs(tmp_path, model="nonrouted", plant={"designated": {}, "changed_units": []},
                                           **{"metrics:testbed": {**tb, "control_routing": unsure}})).holds  # fmt: skip
    inside = outputs(tmp_path, model="nonrouted", plant={"designated": {}, "changed_units": ["model.layers.1.mlp.gate.weight[2]"]},
                     **{"metrics:testbed": {**tb, "control_routing": kept}})  # fmt: skip
    assert not V.routing_untouched(inside).holds  # equivalent, but a router row changed
    assert not V.routing_untouched(outputs(tmp_path, model="nonrouted", plant={"designated": {}, "changed_units": []},
                                           **{"metrics:testbed": tb})).holds  # no swap measured: nothing shown
    costly = outputs(tmp_path, model="y", plant={}, **{"metrics:testbed": {**tb, "heldout_ppl": 4.5}})
    assert not V.plant_kept_utility(costly).holds


def test_fsp_finds_designated_needs_the_top_ranks_and_significance(tmp_path):
    prof = pl.DataFrame({"layer": [1] * 4, "expert": [0, 1, 2, 3], "phi": [0.2, 0.9, 1.0, 0.1],
                         "ard": [0.0] * 4, "significant": [False, True, True, False]})  # fmt: skip
    ok = outputs(tmp_path, plant={"designated": {"1": [1, 2]}}, profile=prof)
    assert V.fsp_finds_designated(ok).holds and V.fsp_finds_designated(ok).value == 2
    wrong = outputs(tmp_path, model="c", plant={"designated": {"1": [0, 2]}}, profile=prof)
    assert not V.fsp_finds_designated(wrong).holds  # expert 0 ranks 3rd
    unsig = outputs(tmp_path, model="d", plant={"designated": {"1": [1, 2]}},
                    profile=prof.with_columns(significant=pl.lit(False)))
    assert not V.fsp_finds_designated(unsig).holds
    none = outputs(tmp_path, model="control", profile=prof)  # no plant: nothing to find
    assert not V.fsp_finds_designated(none).holds
    borrowed = outputs(tmp_path, model="e", profile=prof)  # a counterpart: another plant's experts
    borrowed.designated_from = {1: [1, 2]}
    assert V.fsp_finds_designated(borrowed).holds


def test_intervention_checks_need_significance_and_the_paired_comparison(tmp_path):
    masking = [_cmp("mask_top", "crows_pairs", "pct_stereotype", -0.2, 0.001),
               _cmp("mask_top", "crows_pairs", "pct_stereotype", -0.15, 0.001, reference="mask_random"),
               _cmp("mask_bottom", "crows_pairs", "pct_stereotype", -0.01, 0.6),
               _cmp("mask_top", "perplexity", "ppl", 0.01, 0.3, before=3.8)]  # fmt: skip
    assert V.masking_beats_random(outputs(tmp_path, **{"comparisons:masking": masking})).holds
    no_pair = [c if c["reference"] == "baseline" else {**c, "p_bh": 0.2} for c in masking]  # random does as much
    assert not V.masking_beats_random(outputs(tmp_path, **{"comparisons:masking": no_pair})).holds
    bottom = masking[:2] + [_cmp("mask_bottom", "crows_pairs", "pct_stereotype", -0.1, 0.01)] + masking[3:]
    assert not V.masking_beats_random(outputs(tmp_path, **{"comparisons:masking": bottom})).holds
    arr_ok = {"comparisons:arr_eval": [_cmp("arr_4", "crows_pairs", "pct_stereotype", -0.25, 0.001, equivalent=False),
                                       _cmp("arr_4", "perplexity", "ppl", 0.1, 0.001, before=3.8)],
              "metrics:arr_eval": {"condition": "arr_4"}}  # fmt: skip
    assert V.arr_lowers_bias(outputs(tmp_path, **arr_ok)).holds
    overshoot = {**arr_ok, "comparisons:arr_eval": [_cmp("arr_4", "crows_pairs", "pct_stereotype", -0.7, 0.001),
                                                    arr_ok["comparisons:arr_eval"][1]]}  # 0.8 → 0.1: farther from parity
    assert not V.arr_lowers_bias(outputs(tmp_path, **overshoot)).holds
    skipped = {"comparisons:arr_eval": [], "metrics:arr_eval": {"condition": None}}  # λ* = 0
    assert not V.arr_lowers_bias(outputs(tmp_path, **skipped)).holds


def test_an_effect_must_be_significant_and_beyond_the_equivalence_margin(tmp_path):
    """arr/steer/generation checks: a significant sliver that TOST calls negligible is no effect
    (what φ shuffled within layers gives on `routed`: −0.054, −0.032, −0.056, all p_BH < 0.05)."""
    def arr(delta, p, eq):
        return {"comparisons:arr_eval": [_cmp("arr_8", "crows_pairs", "pct_stereotype", delta, p, equivalent=eq),
                                         _cmp("arr_8", "perplexity", "ppl", 0.02, 0.01, before=3.8)],
                "metrics:arr_eval": {"condition": "arr_8"}}  # fmt: skip
    assert V.arr_lowers_bias(outputs(tmp_path, **arr(-0.28, 0.001, False))).holds
    assert not V.arr_lowers_bias(outputs(tmp_path, **arr(-0.054, 0.002, True))).holds  # significant, negligible
    assert not V.arr_lowers_bias(outputs(tmp_path, **arr(-0.28, 0.2, False))).holds  # large, not significant
    assert not V.arr_lowers_bias(outputs(tmp_path, **arr(-0.28, 0.001, None))).holds  # no margin: not decided

    def steer(delta, p, eq):
        return {"comparisons:steer": [_cmp("steer", "crows_pairs", "pct_stereotype", delta, p, equivalent=eq)]}
    assert V.steer_lowers_bias(outputs(tmp_path, **steer(-0.3, 0.001, False))).holds
    assert not V.steer_lowers_bias(outputs(tmp_path, **steer(-0.032, 0.001, True))).holds

    def gen(mask, arr_, eq_mask, eq_arr):
        return {"comparisons:generation": [
            _cmp("mask_top", "testbed_completion", "own_share", mask, 0.001, before=0.65, equivalent=eq_mask),
            _cmp("arr", "testbed_completion", "own_share", arr_, 0.001, before=0.65, equivalent=eq_arr)]}  # fmt: skip
    assert V.generation_follows(outputs(tmp_path, **gen(-0.12, -0.14, False, False))).holds
    assert not V.generation_follows(outputs(tmp_path, **gen(-0.056, -0.14, True, False))).holds


def test_nothing_moves_needs_equivalence_not_just_non_significance(tmp_path):
    stages = {f"comparisons:{s}": [] for s in V.ROUTING_STAGES}
    calm = {**stages, "comparisons:masking": [_cmp("mask_top", "crows_pairs", "pct_stereotype", 0.004, 0.9, 0.5, equivalent=True)]}
    assert V.nothing_moves_preference(outputs(tmp_path, **calm)).holds
    unclear = {**stages, "comparisons:masking": [_cmp("mask_top", "crows_pairs", "pct_stereotype", 0.03, 0.4, 0.5, equivalent=False)]}
    assert not V.nothing_moves_preference(outputs(tmp_path, **unclear)).holds  # a large p-value is no claim of no effect
    moved = {**stages, "comparisons:steer": [_cmp("steer", "crows_pairs", "pct_stereotype", -0.1, 0.001, 0.5, equivalent=False)]}
    assert not V.nothing_moves_preference(outputs(tmp_path, **moved)).holds
    assert not V.nothing_moves_preference(outputs(tmp_path, **stages)).holds  # nothing compared: nothing shown
    # prompt debiasing edits no routing: its Δ (here not shown to be nothing) is reported but not judged
    prefix = {**calm, "comparisons:alternatives": [_cmp("prompt_prefix", "crows_pairs", "pct_stereotype", -0.037, 0.7, 0.5,
                                                        equivalent=False)]}  # fmt: skip
    assert V.nothing_moves_preference(outputs(tmp_path, **prefix)).holds
    only_prefix = {**stages, "comparisons:alternatives": prefix["comparisons:alternatives"]}
    assert not V.nothing_moves_preference(outputs(tmp_path, **only_prefix)).holds  # no routing edit compared: nothing shown


def test_nothing_moves_judges_selection_probes_by_significance_and_excuses_only_damage(tmp_path):
    """The null claim (docs/method.md §10): validation-split selection conditions (AALS probes, λ grid)
    must not change the preference significantly; test-split effects must be equivalent or damage."""
    stages = {f"comparisons:{s}": [] for s in V.ROUTING_STAGES}
    calm = [_cmp("mask_top", "crows_pairs", "pct_stereotype", 0.004, 0.9, 0.5, equivalent=True)]
    # routed_null seed 2's layer-1 probe: Δ −0.060, CI past −0.1, p_BH 0.22: the selection found nothing
    probe = {**stages, "comparisons:masking": calm,
             "comparisons:aals": [_cmp("layer_1", "crows_pairs", "pct_stereotype", -0.060, 0.22, 0.5, equivalent=False)]}  # fmt: skip
    v = V.nothing_moves_preference(outputs(tmp_path, **probe))
    assert v.holds and "selection, not shown equivalent" in v.detail and "aals/layer_1" in v.detail  # said, not hidden
    found = {**probe, "comparisons:aals": [_cmp("layer_1", "crows_pairs", "pct_stereotype", -0.060, 0.01, 0.5, equivalent=False)]}
    assert not V.nothing_moves_preference(outputs(tmp_path, **found)).holds  # a probe that finds a change: fails
    # the same Δ on the test split is an effect: not shown unmoved
    effect = {**stages, "comparisons:masking": [_cmp("mask_top", "crows_pairs", "pct_stereotype", -0.060, 0.22, 0.5, equivalent=False)]}
    assert not V.nothing_moves_preference(outputs(tmp_path, **effect)).holds
    damaged = {**stages, "comparisons:masking": [*effect["comparisons:masking"],
                                                 _cmp("mask_top", "perplexity", "ppl", 0.5, 0.001, before=3.8)]}  # fmt: skip
    v = V.nothing_moves_preference(outputs(tmp_path, **damaged))
    assert v.holds and "with damage" in v.detail and "masking/mask_top" in v.detail
    mild = {**stages, "comparisons:masking": [*effect["comparisons:masking"],
                                              _cmp("mask_top", "perplexity", "ppl", 0.1, 0.001, before=3.8)]}  # fmt: skip
    assert not V.nothing_moves_preference(outputs(tmp_path, **mild)).holds  # +2.6 % perplexity is no damage


def _generations(counts: dict[str, list[tuple[int, int, int]]]) -> pl.DataFrame:
    """testbed_completion continuations: per condition, per prompt (own half, other half, no profession)."""
    rows = []
    for condition, per_prompt in counts.items():
        for i, (own, other, none) in enumerate(per_prompt):
            kinds = [(True, True)] * own + [(False, True)] * other + [(False, False)] * none
            rows += [{"item": f"d{i:02d}", "condition": condition, "names_own_half": o, "names_profession": p} for o, p in kinds]
    return pl.DataFrame(rows)


def test_other_half_change_is_a_paired_comparison_of_per_prompt_rates(tmp_path):
    """By hand: two prompts whose other-half rate goes 8/16 → 4/16 and 6/16 → 4/16: Δ = −0.1875."""
    gens = _generations({"baseline": [(8, 8, 0), (10, 6, 0)], "steer": [(8, 4, 4), (6, 4, 6)]})
    c = V.other_half_change(outputs(tmp_path, generations=gens), "steer", 0.1)
    assert c.before == pytest.approx(7 / 16) and c.after == pytest.approx(4 / 16) and c.delta == pytest.approx(-3 / 16)
    assert c.n == 2 and c.ci_low == pytest.approx(-0.25) and c.ci_high == pytest.approx(-0.125)  # resamples of {−4/16, −2/16}
    assert V.other_half_change(outputs(tmp_path, generations=gens), "arr", 0.1) is None  # not decoded
    partial = _generations({"baseline": [(8, 8, 0), (10, 6, 0)], "steer": [(8, 4, 4)]})
    with pytest.raises(RoutelabError, match="decoded different prompts: run `dvc repro generation@routed`"):
        V.other_half_change(outputs(tmp_path, generations=partial), "steer", 0.1)


def test_nothing_moves_generation_excuses_a_broken_completion_task_only(tmp_path):
    """control seed 3: SteerMoE cut the profession rate 0.995 → 0.555, both halves' completions with it,
    and own_share moved +0.068 (p_BH 0.06, not equivalent): damage, not a change of bias. Where the
    other half's completions do not fall beyond the margin (routed under ARR: the plant's own-half
    completions vanish, the profession rate with them), the same own_share move fails the claim."""
    comps = {"comparisons:generation": [
        _cmp("steer", "testbed_completion", "own_share", 0.068, 0.06, before=0.476, equivalent=False),
        _cmp("mask_top", "testbed_completion", "own_share", 0.003, 1.0, before=0.476, equivalent=True)]}  # fmt: skip
    base = [(8 + i % 2, 8 - i % 2, 0) for i in range(24)]
    broken = [(5, 3 + i % 2, 8 - i % 2) for i in range(24)]  # other half −0.27 or so on every prompt
    v = V.nothing_moves_generation(outputs(tmp_path, generations=_generations({"baseline": base, "steer": broken}), **comps))
    assert v.holds and "with damage" in v.detail and "generation/steer" in v.detail
    own_gone = [(3, 8 - i % 2, 5 + i % 2) for i in range(24)]  # profession rate down 0.31, other half unchanged
    assert not V.nothing_moves_generation(outputs(tmp_path, generations=_generations({"baseline": base, "steer": own_gone}),
                                                  **comps)).holds  # fmt: skip
    slight = [(8, 7 - i % 2, 1 + i % 2) for i in range(24)]  # other half −0.06: inside the margin
    assert not V.nothing_moves_generation(outputs(tmp_path, generations=_generations({"baseline": base, "steer": slight}),
                                                  **comps)).holds  # fmt: skip


def test_edits_need_damage_flags_a_clean_reduction(tmp_path):
    empty = {f"comparisons:{s}": [] for s in ("arr_eval", "masking", "ablation", "alternatives", "steer")}
    damaged = {**empty, "comparisons:masking": [_cmp("mask_top", "crows_pairs", "pct_stereotype", -0.15, 0.01),
                                                _cmp("mask_top", "perplexity", "ppl", 0.5, 0.001, before=3.8)]}  # fmt: skip
    assert V.edits_need_damage(outputs(tmp_path, **damaged)).holds
    small = {**empty, "comparisons:arr_eval": [_cmp("arr_8", "crows_pairs", "pct_stereotype", -0.03, 0.001, equivalent=True),
                                               _cmp("arr_8", "perplexity", "ppl", 0.001, 0.8, before=3.8)]}  # fmt: skip
    assert V.edits_need_damage(outputs(tmp_path, **small)).holds  # significant but within ±margin: not removed
    clean = {**empty, "comparisons:arr_eval": [_cmp("arr_4", "crows_pairs", "pct_stereotype", -0.2, 0.001, equivalent=False),
                                               _cmp("arr_4", "perplexity", "ppl", 0.01, 0.001, before=3.8)]}  # fmt: skip
    assert not V.edits_need_damage(outputs(tmp_path, **clean)).holds  # a 0.3 % perplexity rise is no damage
    prefix = {**empty, "comparisons:alternatives": [_cmp("prompt_prefix", "crows_pairs", "pct_stereotype", -0.2, 0.001)]}
    assert V.edits_need_damage(outputs(tmp_path, **prefix)).holds  # not a routing edit
    draws = {**empty, "comparisons:ablation": [
        _cmp("random_phi_0", "crows_pairs", "pct_stereotype", -0.2, 0.001, equivalent=False),
        _cmp("random_phi", "crows_pairs", "pct_stereotype", -0.02, 0.3, equivalent=True)]}  # fmt: skip
    assert V.edits_need_damage(outputs(tmp_path, **draws)).holds  # judged by the draws' average, not one draw


def test_judge_runs_a_roles_checks_and_refuses_an_unknown_role(tmp_path):
    o = outputs(tmp_path, model="diffuse", **{"metrics:testbed": {"crows_pref": 0.9, "crows_ci_low": 0.88,
                "crows_ci_high": 0.92, "fact_mc1": 0.8, "n_pairs": 1440},
                "metrics:bench_baseline": {"crows_pairs": {"validation": {"pct_stereotype": 0.9, "n": 720},
                                                           "test": {"pct_stereotype": 0.9, "n": 720}}}})  # fmt: skip
    found = V.judge(o, "diffuse")
    assert [v.check for v in found] == list(V.ROLES["diffuse"]) and all(v.holds for v in found)
    assert V.summary(found)["holds"] == 3
    with pytest.raises(RoutelabError, match="no ground truth for 'olmoe'"):
        V.judge(o, "olmoe")
