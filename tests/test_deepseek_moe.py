"""DeepSeekMoE remote code on transformers 5.x: loaded as a user would, checked against an independent forward.

The model is routelab's local remote code (tests/remote_code/deepseek_moe), saved next to a tiny
random checkpoint like the Hub's deepseek-ai/deepseek-moe-16b-base, loaded with trust_remote_code
through load_model and the CLI. ``Reference`` recomputes everything in plain torch (float64) from
model.safetensors and config.json, without the loaded model or its code, so a wrong RoPE (the
silent failure of issue 10) fails these tests while a router-hook parity check would pass.

Uninitialised memory is made NaN while loading (torch's deterministic mode fills torch.empty*
with NaN): whatever loading leaves unfilled is then visibly wrong, in every run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import subprocess
import sys

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer

import tiny_models as tm
from routelab.cli import main as cli_main
from routelab.generation import DecodeParams, generate
from routelab.models import ModelSpec, load_model
from routelab.routing import attach

PROMPTS = [
    "the doctor is kind .",
    "the old female nurse was kind and the young male teacher was kind .",
    "a teacher",
    "the engineer , the doctor and the nurse .",
]
N_PAIRS = 20  # CrowS pairs scored by `routelab bench`
TIE = 1e-3  # a router row is a tie when its k-th and (k+1)-th logits are closer than this


@contextlib.contextmanager
def nan_uninitialised_memory():
    """torch.empty/empty_like return NaN-filled tensors inside (torch.use_deterministic_algorithms)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        yield
    finally:
        torch.use_deterministic_algorithms(before)


class Reference:
    """DeepSeekMoE forward of one unpadded sequence in plain torch (float64), from the checkpoint files.

    Written from the architecture (RMSNorm, attention with RoPE rotating pairs (i, i + d/2) by
    angle (t / factor) · θ^(−2i/d), grouped KV heads, dense SwiGLU MLP in the first
    first_k_dense_replace layers, then softmax top-k routed experts (no renormalisation when
    norm_topk_prob is false) plus shared experts), not from the remote code.
    """

    def __init__(self, model_dir):
        self.cfg = json.loads((model_dir / "config.json").read_text())
        self.w = {k: v.double() for k, v in load_file(model_dir / "model.safetensors").items()}

    def _rms(self, x, name):
        return self.w[name] * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"])

    def _mlp(self, x, prefix):
        w = self.w
        return (F.silu(x @ w[prefix + "gate_proj.weight"].T) * (x @ w[prefix + "up_proj.weight"].T)) @ w[
            prefix + "down_proj.weight"
        ].T

    def _rope(self, x, T):
        d = x.shape[-1]
        factor = (self.cfg["rope_scaling"] or {}).get("factor", 1.0)
        freq = self.cfg["rope_theta"] ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
        angle = (torch.arange(T, dtype=torch.float64) / factor)[:, None] * freq  # (T, d/2)
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], dim=-1)

    def forward(self, ids: list[int]):
        """(log-probabilities (T, V), {MoE layer: router logits (T, K)})."""
        c, w = self.cfg, self.w
        T, H, nh, nkv = len(ids), c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        d = H // nh
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]  # (T, H)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # (T, T) keys after the query
        routers = {}
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = self._rms(x, p + "input_layernorm.weight")
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, nh, d).transpose(0, 1)  # (nh, T, d)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, nkv, d).transpose(0, 1)  # (nkv, T, d)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, nkv, d).transpose(0, 1)
            q, k = self._rope(q, T), self._rope(k, T)
            k, v = k.repeat_interleave(nh // nkv, dim=0), v.repeat_interleave(nh // nkv, dim=0)  # head j ↔ kv j·nkv/nh
            scores = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(future, float("-inf"))  # (nh, T, T)
            attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, H)
            x = x + attn @ w[p + "self_attn.o_proj.weight"].T
            h = self._rms(x, p + "post_attention_layernorm.weight")
            if layer < c["first_k_dense_replace"]:
                x = x + self._mlp(h, p + "mlp.")
                continue
            z = h @ w[p + "mlp.gate.weight"].T  # (T, K)
            routers[layer] = z
            probs = z.softmax(-1)
            top = probs.topk(c["num_experts_per_tok"], dim=-1).indices  # (T, k)
            gates = torch.zeros_like(probs).scatter(1, top, probs.gather(1, top))  # (T, K), 0 off the top-k
            routed = sum(gates[:, e : e + 1] * self._mlp(h, f"{p}mlp.experts.{e}.") for e in range(c["n_routed_experts"]))
            x = x + routed + self._mlp(h, p + "mlp.shared_experts.")
        x = self._rms(x, "model.norm.weight")
        return (x @ w["lm_head.weight"].T).log_softmax(-1), routers

    def loglikelihood(self, ids: list[int]) -> float:
        """Σ_t log p(ids[t] | ids[:t]) over t ≥ 1."""
        logp, _ = self.forward(ids)
        return float(sum(logp[t - 1, ids[t]] for t in range(1, len(ids))))

    def greedy(self, ids: list[int], n: int, eos: int) -> list[int]:
        """n greedy tokens, each from a forward over the whole prefix (no cache); stops after EOS."""
        out: list[int] = []
        for _ in range(n):
            logp, _ = self.forward(ids + out)
            out.append(int(logp[-1].argmax()))
            if out[-1] == eos:
                break
        return out


def _crows_rows(shared_dir):
    with (shared_dir / "benchmarks/crows_pairs/crows_pairs_anonymized.csv").open(newline="", encoding="utf-8") as fh:
        return [row for _, row in zip(range(N_PAIRS), csv.DictReader(fh))]


@pytest.fixture(scope="module")
def crows_csv(shared_dir, tmp_path_factory):
    lines = (shared_dir / "benchmarks/crows_pairs/crows_pairs_anonymized.csv").read_text().splitlines()
    path = tmp_path_factory.mktemp("crows") / "crows.csv"
    path.write_text("\n".join(lines[: N_PAIRS + 1]) + "\n")  # header + N_PAIRS pairs, original format
    assert len(_crows_rows(shared_dir)) == N_PAIRS
    return path


@pytest.fixture(scope="module")
def model_dir(shared_dir, tmp_path_factory):
    texts = PROMPTS + [r[f] for r in _crows_rows(shared_dir) for f in ("sent_more", "sent_less")]
    return tm.save_tiny_deepseek_moe(tmp_path_factory.mktemp("deepseek_moe") / "model", texts, seed=0)


@pytest.fixture(scope="module")
def reference(model_dir):
    return Reference(model_dir)


@pytest.fixture(scope="module")
def lm(model_dir):
    with nan_uninitialised_memory():
        return load_model(ModelSpec(path=str(model_dir), trust_remote_code=True, dtype="float32", device="cpu"))


def _decisive(z: torch.Tensor, k: int) -> torch.Tensor:
    """(T,) rows whose k-th and (k+1)-th router logits differ by more than TIE."""
    top = z.topk(k + 1, dim=-1).values
    return (top[:, k - 1] - top[:, k]) > TIE


def _sets(index) -> list[list[int]]:
    return [sorted(r) for r in torch.as_tensor(index).tolist()]


# ---- the local remote code really breaks on 5.x as the original does ----------------------------
def test_plain_transformers_fails_at_load_as_with_the_original_remote_code(model_dir):
    """Behaviours 1 and 2, in a fresh interpreter: without routelab, from_pretrained fails."""
    script = f"""
import transformers.utils.import_utils as iu
from transformers import AutoModelForCausalLM
def load():
    try:
        AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
    except Exception as exc:
        print(type(exc).__name__, exc)
load()
iu.is_torch_fx_available = lambda: False  # only the import put back
load()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("ImportError") and "is_torch_fx_available" in lines[0], run.stdout + run.stderr
    assert lines[1] == "KeyError 'type'", run.stdout + run.stderr


def test_legacy_kv_cache_api_is_gone_so_the_adapter_decodes_without_cache(lm):
    """Behaviour 4: with use_cache the remote code calls DynamicCache.from_legacy_cache."""
    ids = lm.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with pytest.raises(AttributeError, match="from_legacy_cache"):
        lm.model(input_ids=ids, use_cache=True)
    assert lm.adapter.kv_cache is False and lm.model.config.use_cache is False


# ---- load_model: what it patches -------------------------------------------------------------------
def test_load_model_restores_rope_config_and_recomputes_rope_buffers(lm):
    model = lm.model
    assert type(model).__module__.startswith("transformers_modules.")  # really the folder's remote code
    assert model.config.rope_scaling is None and model.config.rope_theta == 10000.0
    assert lm.load_fixes == [
        "config.rope_scaling {'rope_theta': 10000.0, 'rope_type': 'default'} -> None (as written in config.json)",
        "config.use_cache = False (legacy KV cache API; decoding recomputes the prefix)",
        "recomputed non-persistent buffers that loading left uninitialised: inv_freq ×3, cos_cached ×3, sin_cached ×3",
    ]
    assert lm.describe()["load_fixes"] == lm.load_fixes
    d = lm.model.config.hidden_size // lm.model.config.num_attention_heads
    inv_freq = torch.tensor([10000.0 ** (-2 * i / d) for i in range(d // 2)])  # by hand: 1, 0.1, 0.01, 0.001
    angle = torch.arange(128.0)[:, None] * inv_freq  # (T, d/2)
    rotaries = [m for m in model.modules() if type(m).__name__ == "DeepseekRotaryEmbedding"]
    assert len(rotaries) == 3
    for rot in rotaries:
        torch.testing.assert_close(rot.inv_freq, inv_freq)
        torch.testing.assert_close(rot.cos_cached, angle.cos().repeat(1, 2))
        torch.testing.assert_close(rot.sin_cached, angle.sin().repeat(1, 2))


def test_native_models_are_loaded_as_before(tmp_path):
    lm = load_model(ModelSpec(path=str(tm.save_tiny_olmoe(tmp_path / "olmoe")), dtype="float32", device="cpu"))
    assert lm.load_fixes == [] and "load_fixes" not in lm.describe()


# ---- the numbers equal an independent forward --------------------------------------------------------
def test_cli_extract_router_logits_and_topk_equal_the_independent_forward(model_dir, reference, tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "routing.parquet"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    with nan_uninitialised_memory():  # the flags a user gives for deepseek-ai/deepseek-moe-16b-base (params.yaml)
        assert cli_main(["extract", "--model", str(model_dir), "--trust-remote-code", "--device-map", "auto",
                         "--dtype", "float32", "--prompts", str(prompts), "--out", str(out),
                         "--batch-size", "3"]) == 0  # fmt: skip
    df = pl.read_parquet(out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = decisive = 0
    worst = 0.0
    for pid, text in enumerate(PROMPTS):
        ids = tokenizer(text)["input_ids"]
        _, routers = reference.forward(ids)
        for layer, z in routers.items():
            r = df.filter((pl.col("prompt_id") == str(pid)) & (pl.col("layer") == layer)).sort("pos")
            assert r["token_id"].to_list() == ids
            got = torch.tensor(r["logits"].to_list(), dtype=torch.float64)  # (T, K)
            worst = max(worst, float((got - z).abs().nan_to_num(float("inf")).max()))  # NaN counts as wrong
            keep = _decisive(z, 2)
            assert _sets(torch.tensor(r["topk"].to_list())[keep]) == _sets(z.topk(2, dim=-1).indices[keep])
            rows, decisive = rows + len(ids), decisive + int(keep.sum())
    assert worst < 1e-4, f"max |Δ router logits| = {worst:.2e}"
    assert rows == df.height == 2 * (6 + 15 + 3 + 10)  # 2 MoE layers × tokens with BOS
    assert decisive >= rows - 2, f"only {decisive} of {rows} rows away from ties"


def test_cli_bench_loglikelihoods_equal_the_independent_forward(model_dir, reference, crows_csv, tmp_path):
    out, items = tmp_path / "m.json", tmp_path / "items.parquet"
    with nan_uninitialised_memory():
        assert cli_main(["bench", "--model", str(model_dir), "--trust-remote-code", "--dtype", "float32",
                         "--benchmark", "crows_pairs", "--data", str(crows_csv), "--out", str(out),
                         "--items", str(items)]) == 0  # fmt: skip
    df = pl.read_parquet(items)
    assert df.height == N_PAIRS
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def ll(sentence):  # empty context → BOS, then the sentence's tokens (routelab.scoring)
        return reference.loglikelihood([tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"])

    more = torch.tensor([ll(s) for s in df["sent_more"]], dtype=torch.float64)
    less = torch.tensor([ll(s) for s in df["sent_less"]], dtype=torch.float64)
    got = torch.stack([df["ll_more"].to_torch().double(), df["ll_less"].to_torch().double()])  # (2, N_PAIRS)
    diff = float((got - torch.stack([more, less])).abs().nan_to_num(float("inf")).max())  # NaN counts as wrong
    assert diff < 1e-4, f"max |Δ log-likelihood| = {diff:.2e}"
    assert json.loads(out.read_text())["pct_stereotype"] == float((more > less).double().mean())


def test_greedy_generation_equals_the_cache_free_reference(lm, reference):
    eos = lm.tokenizer.eos_token_id
    gens = generate(lm, PROMPTS, DecodeParams(max_new_tokens=8, batch_size=3), show_progress=False)  # left-padded
    for g in gens:
        ids = lm.tokenizer(g.prompt)["input_ids"]
        assert list(g.token_ids) == reference.greedy(ids, 8, eos), g.prompt
    assert sum(len(g.token_ids) for g in gens) > len(PROMPTS)  # not all stopped at once


def test_linear_rope_scaling_is_kept_and_applied(tmp_path):
    """A config.json with the 4.x rope_scaling {"type": "linear", "factor": 2} loads with it as written."""
    scaling = {"type": "linear", "factor": 2.0}
    model_dir = tm.save_tiny_deepseek_moe(tmp_path / "model", PROMPTS, seed=1, rope_scaling=scaling)
    with nan_uninitialised_memory():
        lm = load_model(ModelSpec(path=str(model_dir), trust_remote_code=True, dtype="float32", device="cpu"))
    assert lm.model.config.rope_scaling == scaling
    assert {type(m).__name__ for m in lm.model.modules() if "Rotary" in type(m).__name__} == {
        "DeepseekLinearScalingRotaryEmbedding"}
    ids = lm.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with attach(lm, record=True) as s, torch.no_grad():
        lm.model(input_ids=ids)
    reference = Reference(model_dir)
    _, routers = reference.forward(ids[0].tolist())
    for call in s.records:
        assert float((call.logits.double() - routers[call.layer]).abs().max()) < 1e-4
    reference.cfg["rope_scaling"] = None  # the same model without the scaling: routing differs
    _, unscaled = reference.forward(ids[0].tolist())
    assert max(float((routers[layer] - unscaled[layer]).abs().max()) for layer in routers) > 1e-2


# ---- without the buffer refill, only an independent forward notices ---------------------------------
def test_without_the_buffer_refill_the_parity_check_passes_but_the_forward_is_wrong(
    model_dir, reference, monkeypatch
):
    monkeypatch.setattr("routelab.models.refill_constructor_buffers", lambda model: [])
    with nan_uninitialised_memory():
        broken = load_model(ModelSpec(path=str(model_dir), trust_remote_code=True, dtype="float32", device="cpu"))
    assert not any("non-persistent" in f for f in broken.load_fixes)
    ids = broken.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with attach(broken, record=True) as s, torch.no_grad():  # the adapter parity check passes
        broken.model(input_ids=ids)
    _, routers = reference.forward(ids[0].tolist())
    for call in s.records:
        assert not torch.allclose(call.logits.double(), routers[call.layer], atol=1e-2), call.layer
