"""Tests for routelab.testbed.train: deterministic training from scratch, the model folder, the stages."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, OlmoeForCausalLM

from routelab import testbed as tb
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.testbed import train as train_mod

ROOT = Path(__file__).resolve().parents[1]

TINY = {  # a seconds-scale configuration for training tests
    "seed": 3,
    "corpus": {"sentences_per_descriptor": 20, "neutral_sentences": 40, "n_entities": 8, "values_per_relation": 6,
               "statement_repeats": 1, "qa_repeats": 1, "rare_entities": 2},
    "model": {"layers": 2, "hidden": 32, "intermediate": 32, "heads": 2, "experts": 4, "top_k": 2,
              "max_positions": 160},
    "train": {"steps": 4, "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "eval_batch_size": 256},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> tuple[tb.TestbedParams, tb.Corpus, object]:
    cfg = section(tb.TestbedParams, TINY, "testbed")
    c = tb.generate_corpus(cfg.corpus, strength=0.8, seed=cfg.seed)
    tok = tb.build_tokenizer([r["text"] for r in c.records])
    return cfg, c, tok


def test_short_training_is_deterministic_and_reloads(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, c, tok = tiny
    m1, log1 = train_mod.train_from_scratch(c.records, tok, cfg, progress=False)
    m2, log2 = train_mod.train_from_scratch(c.records, tok, cfg, progress=False)
    assert len(log1["loss"]) == cfg.train.steps
    assert log1["loss"] == log2["loss"] and log1["aux_loss"] == log2["aux_loss"]  # bit-identical
    assert all(math.isfinite(x) for x in log1["loss"])
    assert log1["loss"][0] > math.log(len(tok.get_vocab())) - 0.5  # starts near uniform
    out = tmp_path / "model"
    train_mod.save_model(m1, tok, log1, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, OlmoeForCausalLM) and model.config.num_experts == 4
    tok2 = AutoTokenizer.from_pretrained(out)
    batch = tok2(["the female doctor opened the door.", "the capital of"], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0].item() == tok2.bos_token_id
    with torch.no_grad():
        a = m1(**batch).logits  # (2, T, V)
        b = model.eval()(**batch).logits  # (2, T, V)
    assert torch.equal(a, b)
    saved = json.loads((out / "train_log.json").read_text())
    assert saved["loss"] == log1["loss"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_training_continues_at_the_floor_until_learned(tiny) -> None:  # type: ignore[no-untyped-def]
    """After `steps`, rounds of `extra_steps` at lr x min_lr_ratio while a score is below 1, at most
    `max_extra_steps`; a run learned at once is bit-identical to one without the criterion."""
    import dataclasses

    cfg, c, tok = tiny
    until = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, extra_steps=2, max_extra_steps=5))
    floor = cfg.train.lr * cfg.train.min_lr_ratio
    seen: list[int] = []

    def never(model) -> dict[str, float]:  # type: ignore[no-untyped-def]
        seen.append(1)
        return {"capital": 1.0, "language": 0.5}

    _, log = train_mod.train_from_scratch(c.records, tok, until, progress=False, learned=never)
    assert log["extra_steps"] == 5 and len(log["loss"]) == 4 + 5  # rounds of 2, 2, then the 1 left
    assert log["lr"][4:] == [floor] * 5 and log["step"] == list(range(9))
    assert len(seen) == 4 and len(log["learned"]) == 4  # after `steps` and after each round
    scores = iter([0.0, 0.5, 1.0])  # learned after the second extra round
    _, log = train_mod.train_from_scratch(c.records, tok, until, progress=False, learned=lambda m: {"capital": next(scores)})
    assert log["extra_steps"] == 4 and [s["capital"] for s in log["learned"]] == [0.0, 0.5, 1.0]
    m1, log1 = train_mod.train_from_scratch(c.records, tok, until, progress=False, learned=lambda m: {"capital": 1.0})
    m0, log0 = train_mod.train_from_scratch(c.records, tok, cfg, progress=False)
    assert log1["extra_steps"] == 0 and log1["loss"] == log0["loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m0.state_dict().values()))
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, extra_steps=0, max_extra_steps=3))
    with pytest.raises(RoutelabError, match="extra_steps >= 1 when max_extra_steps > 0"):
        train_mod.train_from_scratch(c.records, tok, bad, progress=False)


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    tp = tb.TrainParams(steps=130, lr=1.0, warmup_steps=30, min_lr_ratio=0.1)
    lrs = [train_mod.lr_at(tp, s) for s in range(tp.steps)]
    assert lrs[0] == pytest.approx(1 / 30) and lrs[29] == pytest.approx(1.0)  # linear warm-up
    assert lrs[30] == pytest.approx(1.0) and lrs[80] == pytest.approx(0.1 + 0.9 * 0.5)  # cosine half-way
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_epoch_blocks_pack_every_token_once() -> None:
    docs = [np.arange(k * 10, k * 10 + 5) for k in range(7)]  # 7 documents of 5 tokens: k0 .. k4
    blocks = train_mod.epoch_blocks(docs, 8, np.random.default_rng(0))  # (4, 8): 35 // 8 blocks
    order = np.random.default_rng(0).permutation(7)  # the document order of this epoch
    assert blocks.shape == (4, 8)
    flat = blocks.reshape(-1)  # (32,)
    assert flat[::5].tolist() == [10 * int(k) for k in order]  # whole documents, one after another
    assert flat[30:].tolist() == [10 * int(order[-1]), 10 * int(order[-1]) + 1]  # the last 3 tokens dropped


def test_bad_training_input_errors_name_the_input(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RoutelabError, match="missing corpus.jsonl.*stages.testbed_corpus"):
        train_mod.train_and_evaluate(tmp_path / "nope", tmp_path / "model", tb.TestbedParams())
    _, c, tok = tiny
    cfg = section(tb.TestbedParams, {**TINY, "train": {**TINY["train"], "seq_len": 200}}, "testbed")
    with pytest.raises(RoutelabError, match="testbed.train.seq_len = 200 exceeds testbed.model.max_positions = 160"):
        train_mod.train_from_scratch(c.records, tok, cfg, progress=False)


def test_train_refuses_a_corpus_of_another_strength(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, c, _ = tiny
    corpus_dir = tmp_path / "stereotyped"
    tb.write_corpus(c, corpus_dir)  # strength 0.8
    with pytest.raises(RoutelabError, match=r"strength 0.8 but variant 'control' trains on the 'balanced' corpus \(strength 0.5\)"):
        train_mod.train_and_evaluate(corpus_dir, tmp_path / "m", tb.TestbedParams(), variant_name="control")
    with pytest.raises(RoutelabError, match="--variant routed: stage testbed_train trains the variants control, diffuse"):
        train_mod.train_and_evaluate(corpus_dir, tmp_path / "m", tb.TestbedParams(), variant_name="routed")


def test_stages_end_to_end_tiny(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"testbed": TINY}))
    corpus, model, metrics = tmp_path / "c", tmp_path / "m", tmp_path / "metrics" / "testbed.json"
    env_py = [sys.executable]
    r = subprocess.run(
        env_py + ["-m", "stages.testbed_corpus", "--params", str(params), "--name", "balanced", "--out", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "testbed_corpus balanced: strength 0.5" in r.stdout
    r = subprocess.run(
        env_py + ["-m", "stages.testbed_train", "--params", str(params), "--variant", "control",
                  "--corpus", str(corpus), "--out", str(model), "--metrics", str(metrics)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads(metrics.read_text())
    assert m["strength"] == 0.5 and m["steps"] == 4 and m["n_pairs"] == 12 * 40 * 3
    assert 0.0 <= m["crows_ci_low"] <= m["crows_pref"] <= m["crows_ci_high"] <= 1.0
    assert m["n_facts"] == 16 and 0.0 <= m["fact_mc1"] <= 1.0 and m["heldout_ppl"] > 1.0 and m["first_token_nll"] > 0.0
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    r = subprocess.run(
        env_py + ["-m", "stages.testbed_corpus", "--params", str(params), "--name", "biased", "--out", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown corpus 'biased'" in r.stderr
    assert np.isfinite(m["final_loss"])
