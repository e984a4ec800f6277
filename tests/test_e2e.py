"""The real-model path end to end: every per-model stage and the report on a tiny random English
model of a non-testbed family, the way docs/runbook.md tells a GPU user to run a real one.

Marker ``e2e`` (run by .ci/run: ``python -m pytest -m e2e tests/test_e2e.py``). A Qwen2-MoE-like
model (a gated shared expert, a dense first layer) with random weights and a BPE tokenizer trained
on the shared benchmark texts is saved in a local folder; the project (this checkout, uncommitted
changes included) is copied to a temporary folder with params.yaml pointing `models.tiny` at it
(listed in `local_models`), a local perplexity text and small sample sizes; then
`dvc repro --glob '*@tiny'` and the report. A random model has no bias to find: its empty
selections are results, recorded with their reason, and every later stage still runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
PER_MODEL = ("prompts", "extract", "profile", "safex", "bench_baseline", "aals", "arr_sweep", "arr_eval", "masking",
             "ablation", "alternatives", "steer", "generation")  # fmt: skip


def _texts() -> list[str]:
    """English sentences of the shared benchmarks (CrowS-Pairs and TruthfulQA): the BPE's corpus."""
    import csv

    with (SHARED / "crows_pairs" / "crows_pairs_anonymized.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = [r["sent_more"] for r in rows] + [r["sent_less"] for r in rows]
    tqa = json.loads((SHARED / "truthfulqa" / "mc_task.json").read_text())
    out += [q["question"] for q in tqa] + [a for q in tqa for a in q["mc1_targets"]]
    return out + [(SHARED / "truthfulqa" / "qa_primer.txt").read_text()]


def save_tiny_english_moe(folder: Path) -> Path:
    """A random Qwen2-MoE-like model (8 routed experts top-2, a shared expert, layer 0 dense) with a
    BPE tokenizer (vocabulary 2,000) trained in seconds on the shared benchmark texts."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=2000, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = tf.Qwen2MoeConfig(vocab_size=hf.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                            moe_intermediate_size=32, shared_expert_intermediate_size=48, mlp_only_layers=[0],
                            max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    model = tf.Qwen2MoeForCausalLM(cfg)
    model.save_pretrained(folder)
    hf.save_pretrained(folder)
    return folder


def _params(copy: Path, model: Path, text: Path) -> None:
    p = yaml.safe_load((copy / "params.yaml").read_text())
    p["pipeline"]["models"] = ["tiny"]
    p["models"]["tiny"] = {"path": str(model), "dtype": "auto", "device": "cpu", "batch_size": 16}
    p["local_models"], p["hub_models"] = ["tiny"], []
    b = p["bench_baseline"]
    b["paths"] = {k: (str((ROOT / v).resolve()) if isinstance(v, str) else v) for k, v in b["paths"].items()}
    b["paths"]["perplexity"], b["primer"] = str(text), str((ROOT / b["primer"]).resolve())
    b.update(limit={"crows_pairs": 40, "truthfulqa": 16, "perplexity": 8}, n_bootstrap=100)
    p["statistics"].update(n_permutations=500, n_bootstrap=100)
    p["prompts"].update(n_templates=4, n_professions=6, n_demographic=120)
    p["profile"]["n_permutations"] = 50
    p["safex"].update(n_resamples=50, alpha=0.25)  # N = floor(alpha K) = 2 of the 8 experts
    p["arr"]["lambdas"] = [1.0, 4.0]
    p["masking"]["draws"] = 2
    p["ablation"].update(random_draws=2, powers=[1.0], top_k=[5])
    p["alternatives"]["random_draws"] = 2
    p["steer"]["n_minus"] = 2
    p["generation"].update(protocols=["stereotype_completion"], sample_sizes={"stereotype_completion": 12}, samples=2,
                           max_new_tokens=4, classifiers=["sentiment", "negative"])  # fmt: skip
    (copy / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False, allow_unicode=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} missing: the e2e test reads the shared benchmark files beside the project")
    root = tmp_path_factory.mktemp("e2e")
    model = save_tiny_english_moe(root / "tiny_model")
    text = root / "heldout.txt"  # a local English text for perplexity, as the runbook says (no Hub)
    text.write_text("\n".join(_texts()[3000:3040]) + "\n", encoding="utf-8")
    copy = root / "project"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    for rel in tracked:
        if (ROOT / rel).is_file() and not rel.startswith(("data/", "metrics/", "plots/")) and rel != "dvc.lock":
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, copy / rel)
    _params(copy, model, text)
    env = {**os.environ, "PYTHONPATH": f"{copy / 'src'}:{copy}", "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=e2e", "-c", "user.email=e@x",
                                                               "commit", "-qm", "e2e"]):  # fmt: skip
        subprocess.run(cmd, cwd=copy, check=True, env=env)
    dvc = [sys.executable, "-m", "dvc"]
    out = subprocess.run([*dvc, "repro", "--glob", "*@tiny"], cwd=copy, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = subprocess.run([*dvc, "repro", "--single-item", "report"], cwd=copy, capture_output=True, text=True, env=env)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    return copy, out.stdout + report.stdout, _dvc(copy, "status", *_tiny_stages(copy)).stdout


def test_every_per_model_stage_ran_and_the_report_rendered(run, tmp_path):
    copy, log, status = run
    for stage in PER_MODEL:
        assert f"{stage}[tiny]" in log, f"stage {stage}@tiny did not run"
        assert (copy / "metrics" / "tiny" / f"{stage}.json").is_file()
    assert "local_model[tiny]" in log and "summary[tiny]" in log
    summary = json.loads((copy / "metrics" / "summary" / "tiny.json").read_text())
    assert summary["checks"] is None and 0 <= summary["pref"] <= 1  # not a testbed: no ground truth, numbers all the same
    page = copy / "plots" / "report" / "report.html"
    assert page.is_file() and "tiny" in page.read_text()
    from routelab.report import check_html

    seen = check_html(page, tmp_path / "report.png")
    assert seen["images"] >= 3 and seen["tables"] >= 5 and seen["requests"] <= 1, seen


def test_an_empty_safex_selection_is_a_recorded_result(run):
    """A random model has no stable sensitive expert: SAFEx selects none (or none in the AALS layers)
    — a result that alternatives records with its reason, the summary line and the report show,
    and after which steer, generation and the report still run."""
    copy, log, _ = run
    safex = json.loads((copy / "metrics" / "tiny" / "safex.json").read_text())
    alt = json.loads((copy / "metrics" / "tiny" / "alternatives.json").read_text())
    why = alt["skipped"]["safex"]
    assert ("SAFEx selected no expert" in why) if safex["safex_selected"] == 0 else ("AALS selected no layer" in why
                                                                                   or "no expert in layers" in why)
    assert "random_selection" in alt["skipped"] and "prompt_prefix" in alt["results"]  # the rest still ran
    assert "skipped: safex (" in log  # the stage's summary line says so
    assert "tiny: safex skipped — " in (copy / "plots" / "report" / "report.md").read_text()  # and the report


def _dvc(copy: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{copy / 'src'}:{copy}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=copy, capture_output=True, text=True, env=env)


def _tiny_stages(copy: Path) -> list[str]:
    """The stages of model `tiny` (`dvc status` has no --glob)."""
    stages = yaml.safe_load((copy / "dvc.yaml").read_text())["stages"]
    return [f"{n}@tiny" for n, st in stages.items() if st.get("foreach") in ("${pipeline.models}", "${local_models}")]


def _outputs(copy: Path) -> dict[str, bytes]:
    """Every file a stage wrote (metrics, data, plots), by path: what a failed run must leave alone."""
    return {str(f.relative_to(copy)): f.read_bytes() for top in ("metrics", "data", "plots")
            for f in sorted((copy / top).rglob("*")) if f.is_file()}  # fmt: skip


def test_dvc_metrics_show_fits_200_columns_and_exp_show_fits_100(run):
    copy, _, _ = run
    shown = _dvc(copy, "metrics", "show")
    assert shown.returncode == 0 and "metrics/summary/tiny.json" in shown.stdout, shown.stderr
    assert max(map(len, shown.stdout.splitlines())) <= 200, shown.stdout
    for key in ("pref", "lambda", "ppl"):  # the headline numbers, as flat short keys
        assert key in shown.stdout
    # docs/pipeline.md's narrow `dvc exp show`: one changed parameter, one metric, in 100 columns
    exp = _dvc(copy, "exp", "show", "--no-pager", "--drop", ".*", "--keep", "Experiment|arr.beta|metrics/summary/.*:lambda")
    assert exp.returncode == 0, exp.stderr
    assert max(map(len, exp.stdout.splitlines())) <= 100, exp.stdout


def test_a_params_typo_fails_in_seconds_naming_the_key_and_removes_no_output(run):
    """check_params runs before every other stage: a typo'd key stops `dvc repro` in seconds, with
    the key and its nearest known neighbour named, before DVC removes any stage's outputs."""
    copy, _, _ = run
    params = copy / "params.yaml"
    original, before = params.read_text(), _outputs(copy)
    p = yaml.safe_load(original)
    p["arr"]["bta"] = 0.5  # as `dvc exp run -S +arr.bta=0.5` would write it
    params.write_text(yaml.safe_dump(p, sort_keys=False, allow_unicode=True))
    try:
        start = time.perf_counter()
        out = _dvc(copy, "repro", "--glob", "*@tiny")
        elapsed = time.perf_counter() - start
    finally:
        params.write_text(original)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "arr: unknown key 'bta'. Did you mean 'beta'?" in said, said[-2000:]
    assert elapsed < 5.0, f"the typo took {elapsed:.1f} s to report"
    assert _outputs(copy) == before  # every metrics file, data folder and plot still there, same bytes
    _dvc(copy, "repro", "--single-item", "check_params")  # the stamp back for the next test


def test_an_in_place_weight_change_reruns_exactly_the_stages_that_load_the_model(run):
    """models.tiny.path is a local folder: local_model fingerprints its files, so changing one router
    weight in place makes every stage that loads the model out of date, and no other."""
    import torch
    from safetensors.torch import load_file, save_file

    copy, _, status = run
    assert "changed deps" not in status and "changed outs" not in status, status  # after the run, all up to date
    model = Path(yaml.safe_load((copy / "params.yaml").read_text())["models"]["tiny"]["path"])
    shard = model / "model.safetensors"
    weights = load_file(shard)
    gate = next(k for k in weights if k.endswith("mlp.gate.weight"))
    weights[gate] = weights[gate] + torch.full_like(weights[gate], 0.01)
    save_file(weights, shard, metadata={"format": "pt"})
    pinned = _dvc(copy, "repro", "--single-item", "local_model@tiny")
    assert pinned.returncode == 0, pinned.stdout[-2000:] + pinned.stderr[-2000:]
    status = _dvc(copy, "status", *_tiny_stages(copy)).stdout
    stale = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))}
    stages = yaml.safe_load((copy / "dvc.yaml").read_text())["stages"]
    loads_model = {f"{name}@tiny" for name, st in stages.items() if st.get("foreach") == "${pipeline.models}"
                   and "data/models/${item}" in st["do"].get("deps", [])}  # fmt: skip
    stale.discard("local_model@tiny")  # always changed: it re-hashes the folder on every repro
    assert len(loads_model) >= 10 and stale == loads_model, (sorted(stale), sorted(loads_model))
