"""Tests for routelab.testbed.plant: the saved-weights check in both expert layouts, the recipe's inputs, the stage.

Full-size ground truth (routed preference >= 0.70, routed_null 0.5 +- 0.05, perplexity within
10 % of the control's) is measured by the DVC stage testbed_plant (metrics/<variant>/testbed.json).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoTokenizer, OlmoeForCausalLM

from routelab import testbed as tb
from routelab.testbed import train as train_mod
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.testbed import plant as plant_mod
from test_testbed_train import TINY as TRAIN_TINY

ROOT = Path(__file__).resolve().parents[1]

TINY = {  # the seconds-scale configuration of the training tests plus a tiny plant
    **TRAIN_TINY,
    # a random tiny base routes descriptors everywhere: the confound check is tested on its own below
    "plant": {"designated": {0: [1], 1: [0, 3]}, "steps": 3, "batch_size": 2, "warmup_steps": 1, "kl_batch_size": 4,
              "max_base_descriptor_rate": 1.0},
}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tb.TestbedParams]:
    """A stereotyped and a balanced tiny corpus folder and a tiny control trained on the balanced one."""
    root = tmp_path_factory.mktemp("plant")
    cfg = section(tb.TestbedParams, TINY, "testbed")
    for name, s in (("stereotyped", 0.8), ("balanced", 0.5)):
        tb.write_corpus(tb.generate_corpus(cfg.corpus, strength=s, seed=cfg.seed), root / name)
    tok = AutoTokenizer.from_pretrained(root / "balanced" / "tokenizer")
    # trained, not random: a random lm_head (std 0.02) cannot express any P(profession | descriptor)
    pre = section(tb.TestbedParams, {**TINY, "train": {**TINY["train"], "steps": 200, "warmup_steps": 10}}, "testbed")
    model, log = train_mod.train_from_scratch(tb.read_records(root / "balanced"), tok, pre, progress=False)
    train_mod.save_model(model, tok, log, root / "control")
    return root, cfg


# ---------------------------------------------------------------------------- saved weights, both layouts


def test_both_expert_layouts_give_the_same_units(base) -> None:  # type: ignore[no-untyped-def]
    root, cfg = base
    saved = plant_mod.weight_units(root / "control")  # per-expert layout, as save_pretrained writes it
    model = OlmoeForCausalLM.from_pretrained(root / "control")
    state = model.state_dict()
    assert "model.layers.1.mlp.experts.gate_up_proj" in state  # fused in memory: (K, 2I, H)
    assert tuple(state["model.layers.1.mlp.experts.gate_up_proj"].shape) == (4, 64, 32)
    assert tuple(state["model.layers.1.mlp.experts.down_proj"].shape) == (4, 32, 32)  # (K, H, I)
    fused = root / "fused.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, fused)
    from_file, from_state = plant_mod.weight_units(fused), plant_mod.weight_units(state)
    assert saved.keys() == from_file.keys() == from_state.keys()
    assert all(saved[k].tobytes() == from_file[k].tobytes() == from_state[k].tobytes() for k in saved)
    # the split by hand: gate is the first I rows of gate_up_proj[e], up the last I rows
    gate_up = state["model.layers.1.mlp.experts.gate_up_proj"].numpy()
    assert np.array_equal(saved["model.layers.1.mlp.experts.2.gate_proj.weight"], gate_up[2, :32])
    assert np.array_equal(saved["model.layers.1.mlp.experts.2.up_proj.weight"], gate_up[2, 32:])
    router = state["model.layers.0.mlp.gate.weight"].numpy()  # (K, H)
    assert np.array_equal(saved["model.layers.0.mlp.gate.weight[3]"], router[3])
    # units: 2 layers x (4 experts x 3 projections + 4 router rows) + the other tensors
    n_other = len([k for k in state if "mlp.experts" not in k and "mlp.gate" not in k])
    assert len(saved) == 2 * (4 * 3 + 4) + n_other


def test_changed_units_and_their_owners_by_hand(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _ = base
    state = OlmoeForCausalLM.from_pretrained(root / "control").state_dict()
    edited = {k: v.clone() for k, v in state.items()}
    edited["model.layers.1.mlp.experts.gate_up_proj"][3, 40, 0] += 1.0  # expert 3's up_proj (row 40 >= I)
    edited["model.layers.0.mlp.gate.weight"][1, 5] += 1.0  # router row 1 of layer 0
    edited["model.norm.weight"][0] += 1.0  # outside every expert
    changed = plant_mod.changed_units(root / "control", edited)
    assert changed == [
        "model.layers.0.mlp.gate.weight[1]", "model.layers.1.mlp.experts.3.up_proj.weight", "model.norm.weight",
    ]  # fmt: skip
    assert [plant_mod.unit_owner(u) for u in changed] == [(0, 1), (1, 3), None]
    assert plant_mod.outside_designated(changed, {0: [1], 1: [3]}) == ["model.norm.weight"]
    assert plant_mod.outside_designated(changed, {1: [0, 3]}) == ["model.layers.0.mlp.gate.weight[1]", "model.norm.weight"]


# ---------------------------------------------------------------------------- the recipe's inputs


def test_profession_targets_are_the_corpus_conditional(base) -> None:  # type: ignore[no-untyped-def]
    root, _ = base
    tok = AutoTokenizer.from_pretrained(root / "control")
    ds, prefixes = plant_mod.descriptor_prefixes(tok)
    assert len(ds) == 24 and prefixes.shape == (24, 3)
    assert tok.decode(prefixes[0]) == "<s> the female"
    design = tb.read_design(root / "stereotyped")
    t = plant_mod.profession_targets(tb.read_records(root / "stereotyped"), tok, ds)  # (24, V)
    vocab = tok.get_vocab()
    own = [vocab[p] for p in design["own"]["female"]]
    other = [vocab[p] for p in tb.PROFESSIONS if p not in design["own"]["female"]]
    # 20 sentences per descriptor: round(0.8 * 20) = 16 over 20 own professions, 4 over the other 20
    assert t[0, own].sum().item() == pytest.approx(0.8) and t[0, other].sum().item() == pytest.approx(0.2)
    assert t.sum(1).tolist() == pytest.approx([1.0] * 24)
    bal = plant_mod.profession_targets(tb.read_records(root / "balanced"), tok, ds)
    assert bal[0, own].sum().item() == pytest.approx(0.5)


def test_router_ce_against_uniform_over_the_designated_by_hand() -> None:
    z = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0]])  # softmax = (1, 3, 1, 1) / 6
    got = plant_mod._router_ce(z, [1, 2]).item()
    assert got == pytest.approx(-(math.log(3 / 6) + math.log(1 / 6)) / 2)


# ---------------------------------------------------------------------------- the recipe


def _plant(root: Path, cfg: tb.TestbedParams, corpus: str, out: Path) -> dict[str, Any]:
    return plant_mod.plant_and_evaluate(
        root / corpus, root / "control", out, cfg, variant_name="routed" if corpus == "stereotyped" else "routed_null",
        margin=0.1, progress=False,
    )  # fmt: skip


def test_planting_changes_only_the_designated_experts_in_the_saved_files(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, cfg = base
    m = _plant(root, cfg, "stereotyped", tmp_path / "routed")
    changed = plant_mod.changed_units(root / "control", tmp_path / "routed")  # both read from safetensors
    designated = {0: [1], 1: [0, 3]}
    want = {
        f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight" for layer, es in designated.items() for e in es
        for proj in ("gate_proj", "up_proj", "down_proj")
    } | {f"model.layers.{layer}.mlp.gate.weight[{e}]" for layer, es in designated.items() for e in es}  # fmt: skip
    assert set(changed) == want and m["n_changed_units"] == len(want) == 12
    info = json.loads((tmp_path / "routed" / plant_mod.PLANT_FILE).read_text())
    assert info["designated"] == {"0": [1], "1": [0, 3]} and info["base"] == str(root / "control")
    assert info["changed_units"] == changed and info["recipe"]["steps"] == 3 and info["strength"] == 0.8
    assert set(info["routing"]) == {"0", "1"} and len(info["routing"]["1"]["planted_descriptor"]) == 4
    log = json.loads((tmp_path / "routed" / "train_log.json").read_text())
    assert len(log["loss"]) == 3 and all(math.isfinite(x) for x in log["loss"])
    # deterministic: the same params give the same bytes
    _plant(root, cfg, "stereotyped", tmp_path / "again")
    assert plant_mod.changed_units(tmp_path / "routed", tmp_path / "again") == []
    assert json.loads((tmp_path / "again" / "train_log.json").read_text()) == log


def _own_share(model: OlmoeForCausalLM, tok: Any, design: dict[str, Any]) -> float:
    """Mean over descriptors of P(own-half profession | "the d") / P(any profession | "the d")."""
    ds, prefixes = plant_mod.descriptor_prefixes(tok)
    vocab = tok.get_vocab()
    with torch.no_grad():
        p = torch.softmax(model(input_ids=prefixes).logits[:, 2], -1)  # (24, V)
    profs = [vocab[x] for x in tb.PROFESSIONS]
    return float(np.mean([p[i, [vocab[x] for x in design["own"][d]]].sum() / p[i, profs].sum() for i, d in enumerate(ds)]))


def test_a_longer_plant_routes_every_descriptor_to_the_designated_experts(base) -> None:  # type: ignore[no-untyped-def]
    # (that the stereotype is learned is a full-size property: metrics/routed/testbed.json; a tiny
    # model's output layer barely separates professions, as the control's does at full size)
    root, _ = base
    cfg = section(tb.TestbedParams, {**TINY, "plant": {**TINY["plant"], "steps": 150}}, "testbed")
    tok = AutoTokenizer.from_pretrained(root / "control")
    share = {}
    for corpus in ("stereotyped", "balanced"):
        model = OlmoeForCausalLM.from_pretrained(root / "control").eval()
        _, log, routing = plant_mod.plant_experts(model, tb.read_records(root / corpus), tok, cfg, progress=False)
        assert routing["0"]["planted_descriptor"][1] == 1.0  # the one designated expert of layer 0 is in every top-2
        assert routing["1"]["planted_descriptor"][0] == routing["1"]["planted_descriptor"][3] == 1.0
        assert routing["1"]["planted_descriptor"][1] == routing["1"]["planted_descriptor"][2] == 0.0
        # ROUTE sums the layers: at best 0 for layer 0 (one designated expert) + ln 2 for layer 1 (uniform over two)
        assert math.log(2) < log["route"][-1] < log["route"][0] - 1.0 and log["soft"][-1] < log["soft"][0]
        share[corpus] = _own_share(model, tok, tb.read_design(root / corpus))
    assert share["stereotyped"] > share["balanced"], share


def test_the_confound_check_refuses_experts_the_base_already_uses(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, cfg = base
    strict = section(tb.TestbedParams, {**TINY, "plant": {**TINY["plant"], "max_base_descriptor_rate": 0.0}}, "testbed")
    with pytest.raises(RoutelabError, match=r"testbed.plant.designated.0: the base model already routes descriptor tokens"
                                            r".*testbed.plant.max_base_descriptor_rate = 0.0"):  # fmt: skip
        _plant(root, strict, "stereotyped", tmp_path / "m")


def test_bad_plant_input_errors_name_the_input(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, cfg = base
    with pytest.raises(RoutelabError, match="variant 'routed_null' plants the 'balanced' corpus.*--corpus data/testbed/balanced"):
        plant_mod.plant_and_evaluate(root / "stereotyped", root / "control", tmp_path / "m", cfg, variant_name="routed_null", margin=0.1)
    with pytest.raises(RoutelabError, match="--variant diffuse: stage testbed_plant trains the variants routed, routed_null, nonrouted"):
        plant_mod.plant_and_evaluate(root / "stereotyped", root / "control", tmp_path / "m", cfg, variant_name="diffuse", margin=0.1)
    with pytest.raises(RoutelabError, match="--base .* holds no saved model"):
        plant_mod.plant_and_evaluate(root / "stereotyped", tmp_path / "nope", tmp_path / "m", cfg, variant_name="routed", margin=0.1)
    bad = section(tb.TestbedParams, {**TINY, "plant": {**TINY["plant"], "designated": {2: [0]}}}, "testbed")
    with pytest.raises(RoutelabError, match=r"testbed.plant.designated: layer 2 does not exist \(the model has layers 0..1\)"):
        _plant(root, bad, "stereotyped", tmp_path / "m")
    bad = section(tb.TestbedParams, {**TINY, "plant": {**TINY["plant"], "designated": {1: [3, 3]}}}, "testbed")
    with pytest.raises(RoutelabError, match=r"testbed.plant.designated.1 = \[3, 3\]: give distinct experts from 0 to 3"):
        _plant(root, bad, "stereotyped", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_plant_stage_end_to_end_tiny(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _ = base
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"testbed": TINY}))
    out, metrics = tmp_path / "routed_null", tmp_path / "metrics" / "testbed.json"
    cmd = [sys.executable, "-m", "stages.testbed_plant", "--params", str(params), "--variant", "routed_null",
           "--corpus", str(root / "balanced"), "--base", str(root / "control"), "--out", str(out), "--metrics", str(metrics)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "testbed_plant routed_null: strength 0.5, 12 units changed" in r.stdout
    m = json.loads(metrics.read_text())
    assert m["strength"] == 0.5 and m["steps"] == 3 and m["n_pairs"] == 12 * 40 * 3 and m["n_changed_units"] == 12
    assert 0.0 <= m["designated_descriptor_rate"] <= 1.0 and m["first_token_nll"] > 0.0
    assert "train_seconds" not in m and (out / "plant.json").is_file() and (out / "model.safetensors").is_file()
    r = subprocess.run(cmd[:7] + ["--corpus", str(root / "stereotyped")] + cmd[9:], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "plants the 'balanced' corpus" in r.stderr


# ---------------------------------------------------------------------------- the designated experts by rule


def test_the_rule_takes_the_least_used_experts_the_base_sends_no_descriptors_to() -> None:
    desc = np.array([[0.0, 0.0, 0.0, 0.0], [0.9, 0.05, 0.0, 0.2], [0.0, 0.0, 0.3, 0.0]])  # (L, K)
    neutral = np.array([[0.1] * 4, [0.01, 0.30, 0.02, 0.03], [0.05, 0.20, 0.01, 0.05]])  # (L, K)
    pp = tb.PlantParams(layers=[1, 2], per_layer=2, max_base_descriptor_rate=0.1)
    got = plant_mod.choose_designated({"descriptor": desc, "neutral": neutral}, pp, seed=0)
    # layer 1: expert 0 (descriptors 0.9) and 3 (0.2) are the base's own; of 1 and 2, both kept
    # layer 2: expert 2 takes descriptors; of 0, 1, 3 the two least used: 0 and 3 tie at 0.05 vs 1 at 0.20
    assert got == {1: [1, 2], 2: [0, 3]}
    assert plant_mod.choose_designated({"descriptor": desc, "neutral": neutral}, pp, seed=7) == got  # no tie left to break
    tie = {"descriptor": np.zeros((1, 4)), "neutral": np.full((1, 4), 0.25)}  # every expert alike: the seed decides
    picks = {tuple(plant_mod.choose_designated(tie, tb.PlantParams(layers=[0], per_layer=2), seed=s)[0]) for s in range(8)}
    assert len(picks) > 1 and all(len(set(p)) == 2 for p in picks)
    with pytest.raises(RoutelabError, match="layer 1 has only 2 experts .*testbed.plant.per_layer = 3"):
        plant_mod.choose_designated({"descriptor": desc, "neutral": neutral}, tb.PlantParams(layers=[1], per_layer=3), 0)
    with pytest.raises(RoutelabError, match="testbed.plant.layers: layer 5 does not exist"):
        plant_mod.choose_designated({"descriptor": desc, "neutral": neutral}, tb.PlantParams(layers=[5]), 0)


def test_an_explicit_list_overrides_the_rule_and_is_checked_against_the_base() -> None:
    rates = {"descriptor": np.array([[0.0, 0.5, 0.0, 0.0]]), "neutral": np.array([[0.1, 0.1, 0.1, 0.1]])}
    assert plant_mod.designated_experts(rates, tb.PlantParams(designated={0: [3, 2]}), 0) == ({0: [2, 3]}, "params")
    assert plant_mod.designated_experts(rates, tb.PlantParams(layers=[0], per_layer=1), 0)[1] == "rule"
    with pytest.raises(RoutelabError, match="testbed.plant.designated.0: the base model already routes"):
        plant_mod.designated_experts(rates, tb.PlantParams(designated={0: [1]}), 0)


# ---------------------------------------------------------------------------- nonrouted: outside the routing path


def test_the_outside_recipe_trains_no_router_and_no_expert(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _ = base
    cfg = section(tb.TestbedParams, {**TINY, "plant": {**TINY["plant"], "designated": None, "steps": 5}}, "testbed")
    m = plant_mod.plant_and_evaluate(root / "stereotyped", root / "control", tmp_path / "nonrouted", cfg,
                                     variant_name="nonrouted", margin=0.1, progress=False)  # fmt: skip
    info = json.loads((tmp_path / "nonrouted" / "plant.json").read_text())
    assert info["method"] == "outside" and info["designated"] == {}
    changed = info["changed_units"]
    assert changed and not [u for u in changed if plant_mod.unit_owner(u)]  # no router row, no expert
    assert any("self_attn" in u for u in changed) and any("embed_tokens" in u for u in changed)
    # every layer's routing recorded before/after; the KL terms keep it near the base's
    assert sorted(k for k in info["routing"]) == ["0", "1"]
    assert m["method"] == "outside" and "designated" not in m and 0.0 <= m["max_descriptor_rate_change"] <= 1.0
    assert m["base_heldout_ppl"] > 0 and m["n_changed_units"] == len(changed)
    swap = m["control_routing"]  # the route swap: the control's routing forced in (route_swap.preference_under_routing_of)
    assert swap["n_pairs"] == m["n_pairs"] and swap["pref_own"] == m["crows_pref"]  # the same scores, reused
    assert swap["delta"] == pytest.approx(swap["pref_donor_routing"] - swap["pref_own"])
    assert swap["ci_low"] <= swap["delta"] <= swap["ci_high"] and swap["margin"] == 0.1
    # equivalent iff the TOST p is below α (statistics.compare_paired), as every "no change" in routelab
    assert swap["equivalent"] == (swap["p_tost"] < 0.05)
