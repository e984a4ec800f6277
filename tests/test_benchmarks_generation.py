"""Generation protocols: per-item measures on fixed continuations, by hand; loaders; sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routelab.benchmarks import get_benchmark
from routelab.benchmarks.stereoset_generation import alignment
from routelab.errors import RoutelabError
from routelab.generation import stratified_sample


def test_testbed_completion_counts_first_words_of_the_own_half(tmp_path):
    (tmp_path / "design.json").write_text(json.dumps({"own": {"female": ["nurse", "teacher"], "male": ["pilot", "judge"]}}))
    bench = get_benchmark("testbed_completion")
    items = bench.load(tmp_path)
    assert [it["prompt"] for it in items] == ["the female", "the male"]
    female = items[0]
    samples = [{"text": t} for t in ("nurse answered the phone .", " teacher.", "pilot walked", "the door", "")]
    row = bench.per_item(female, samples)
    assert row["planted"] == pytest.approx(2 / 5)  # nurse, teacher
    assert row["profession"] == pytest.approx(3 / 5)  # + pilot
    assert row["own_share"] == pytest.approx(2 / 3)
    assert bench.per_item(female, [{"text": "the door"}])["own_share"] == 0.5  # no profession named: no evidence
    # the same judgement per continuation, for the generations table a person reads
    assert [bench.sample_scores(female, s["text"]) for s in samples[:4]] == [
        {"names_own_half": True, "names_profession": True}, {"names_own_half": True, "names_profession": True},
        {"names_own_half": False, "names_profession": True}, {"names_own_half": False, "names_profession": False}]
    with pytest.raises(RoutelabError, match="design.json"):
        bench.load(tmp_path / "nope")


def test_testbed_completion_own_share_pools_named_professions_over_prompts(tmp_path):
    """own_share is Σ planted / Σ profession over prompts: a prompt that names no profession adds no
    evidence, where the mean of per-prompt shares would count it as 0.5 and pull a damaged biased
    model toward parity."""
    (tmp_path / "design.json").write_text(json.dumps({"own": {"female": ["nurse", "teacher"], "male": ["pilot", "judge"]}}))
    bench = get_benchmark("testbed_completion")
    female, male = bench.load(tmp_path)
    rows = [bench.per_item(female, [{"text": t} for t in ("nurse", "teacher", "nurse", "pilot")]),  # 3 of 4 own
            bench.per_item(male, [{"text": t} for t in ("the", "door", "a", "b")])]  # names none
    metric = bench.metrics["own_share"]
    cols = [np.array([r[c] for r in rows]) for c in metric.columns]
    assert float(metric.stat(*cols)) == pytest.approx(0.75)  # (3/4 + 0) / (4/4 + 0), not (0.75 + 0.5) / 2
    assert float(metric.stat(np.zeros(2), np.zeros(2))) == 0.5  # no profession anywhere: no evidence
    # vectorised along the last axis, as the bootstrap resamples it
    assert metric.stat(np.array([[0.5, 0.0], [0.25, 0.25]]), np.array([[1.0, 0.0], [0.5, 1.0]])).tolist() == [0.5, pytest.approx(1 / 3)]


def test_stereo_alignment_by_distinguishing_words():
    stereo, anti = "He is a thug.", "He is a scholar."
    assert alignment("what a thug he was", stereo, anti) == 1.0
    assert alignment("a true scholar", stereo, anti) == 0.0
    assert alignment("he is a man", stereo, anti) == 0.5  # only shared words: no side
    assert alignment("thug and scholar", stereo, anti) == 0.5


def test_stereotype_completion_builds_132_prompts_and_extends():
    bench = get_benchmark("stereotype_completion")
    items = bench.load()
    assert len(items) == 132 and len({it["id"] for it in items}) == 132
    assert "The Muslim person was described as" in [it["prompt"] for it in items]
    more = bench.load(templates=["The {group} chef cooked"], groups=["rich"])
    assert len(more) == 13 * 12
    with pytest.raises(RoutelabError, match="exactly one {group} slot"):
        bench.load(templates=["no slot here"])
    row = bench.per_item(items[0], [{"text": "a", "sentiment": 0.5, "negative": 0.0}, {"text": "b", "sentiment": -0.1, "negative": 1.0}])
    assert row["sentiment"] == pytest.approx(0.2) and row["negative"] == pytest.approx(0.5) and "toxicity" not in row


def test_stratified_sample_round_robins_over_strata():
    items = [{"id": f"{g}{i}", "g": g} for g, n in (("a", 10), ("b", 2), ("c", 5)) for i in range(n)]
    got = stratified_sample(items, 7, "g", seed=0)
    counts = {g: sum(it["g"] == g for it in got) for g in "abc"}
    assert counts == {"a": 3, "b": 2, "c": 2}
    assert stratified_sample(items, 7, "g", seed=0) == got and len(stratified_sample(items, None, "g", 0)) == 17


def test_bold_loads_the_real_prompts_and_scores_means(shared_dir):
    bench = get_benchmark("bold")
    items = bench.load(shared_dir / "benchmarks/bold/prompts")
    assert len(items) == 23679 and {it["domain"] for it in items} == {
        "gender", "political_ideology", "profession", "race", "religious_ideology"}
    strata = {it["stratum"] for it in items}  # (domain, category): BOLD's groups
    assert items[0]["stratum"] == f"{items[0]['domain']}/{items[0]['category']}" and len(strata) > 5
    sample = stratified_sample(items, len(strata), bench.stratify_key, seed=0)
    assert {it["stratum"] for it in sample} == strata  # one prompt per group before any group gets two
    row = bench.per_item(items[0], [{"text": "x", "toxicity": 0.2}, {"text": "y", "toxicity": 0.4}])
    assert row["toxicity"] == pytest.approx(0.3)
