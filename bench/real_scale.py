"""The real-model path at real size on a GPU: random weights in a real checkpoint's shape, no download (not a test).

Usage (on a CUDA machine; docs/performance.md quotes its output):
    python bench/real_scale.py                      # OLMoE-1B-7B and Qwen3-30B-A3B shapes (Qwen3 with 8 of its 48 layers)
    python bench/real_scale.py --shapes qwen3-30b-a3b --qwen3-layers 48   # the whole Qwen3 (~57 GiB of weights)
    python bench/real_scale.py --tiny               # the same code on small shapes, on CPU (a smoke test)

For each shape: the model is built from its config in bfloat16 directly on the device (random
init), with a byte-level BPE tokenizer trained on generated words; then, through the library,
1. extract_routing of 256 prompts: tokens/s;
2. the scorer (routelab.scoring) on 64 sentence pairs and on 8 texts of ~1,000 tokens with the
   default logits budget (bench_baseline.max_logits_bytes, 256 MiB): peak GPU memory and tokens/s;
3. the AALS probes (one ARR condition per MoE layer, routelab.interventions.score_conditions) on
   8 texts of ~1,000 tokens: the case the runbook once warned would run out of memory on Qwen3
   (49 condition rows × 1,000 tokens × 151,936 vocabulary of fp32 logits ≈ 15 GB at once);
4. determinism: the same scores twice (compute.configure_torch: deterministic algorithms, no TF32).
Peak memory is torch.cuda.max_memory_allocated minus the weights (or RSS on CPU).
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: pins the CPU compute path before torch loads)

import argparse
import json
import random
import resource
import time

import numpy as np
import polars as pl
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from routelab import compute
from routelab.adapters import adapter_for_config
from routelab.benchmarks import get_benchmark
from routelab.conditions import ConditionContext, build
from routelab.extract import extract_routing
from routelab.interventions import Suite, score_conditions
from routelab.models import LoadedModel, ModelSpec
from routelab.routing import find_routers
from routelab.scoring import DEFAULT_MAX_LOGITS_BYTES, score

SHAPES = {
    "olmoe-1b-7b": lambda tiny: tf.OlmoeConfig(
        vocab_size=50304, hidden_size=128 if tiny else 2048, intermediate_size=64 if tiny else 1024,
        num_hidden_layers=2 if tiny else 16, num_attention_heads=4 if tiny else 16, num_key_value_heads=4 if tiny else 16,
        num_experts=8 if tiny else 64, num_experts_per_tok=2 if tiny else 8, max_position_embeddings=4096,
        norm_topk_prob=False),
    "qwen3-30b-a3b": lambda tiny, layers=8: tf.Qwen3MoeConfig(
        vocab_size=151936, hidden_size=128 if tiny else 2048, intermediate_size=128 if tiny else 6144,
        moe_intermediate_size=64 if tiny else 768, num_hidden_layers=2 if tiny else layers,
        num_attention_heads=4 if tiny else 32, num_key_value_heads=2 if tiny else 4, head_dim=32 if tiny else 128,
        num_experts=8 if tiny else 128, num_experts_per_tok=2 if tiny else 8, norm_topk_prob=True,
        max_position_embeddings=4096),
}  # fmt: skip
WORDS = [f"w{i}" for i in range(4000)]


def tokenizer(seed: int = 0) -> tf.PreTrainedTokenizerFast:
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=20)) for _ in range(2000)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>")  # fmt: skip


def build_model(cfg: tf.PretrainedConfig, device: str, dtype: torch.dtype, tok) -> LoadedModel:
    torch.manual_seed(0)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    adapter = adapter_for_config(cfg)
    compute.configure_torch(device)
    K, k = adapter.sizes(cfg)
    spec = ModelSpec(path="random-init", dtype=str(dtype).split(".")[-1], device=device, batch_size=16)
    return LoadedModel(model, tok, adapter, spec, K, k, list(find_routers(model, adapter)))


def peak(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def timed(fn, device):
    reset(device)
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, peak(device)


def run_shape(name: str, cfg, device: str, dtype: torch.dtype, tok, n_long: int, long_words: int) -> dict:
    rng = random.Random(1)
    lm, build_s, weights = timed(lambda: build_model(cfg, device, dtype, tok), device)
    out = {"shape": name, "layers": cfg.num_hidden_layers, "experts": lm.num_experts, "top_k": lm.top_k,
           "vocab": cfg.vocab_size, "build_s": round(build_s, 1), "weights_gib": round(weights, 2)}  # fmt: skip
    prompts = [(str(i), " ".join(rng.choices(WORDS, k=rng.randint(8, 24)))) for i in range(256)]
    summary, s, _ = timed(lambda: extract_routing(lm, prompts, "/tmp/real_scale_routing.parquet", batch_size=32,
                                                  progress=False), device)  # fmt: skip
    out["extract_tokens_per_s"] = round(summary["tokens"] / s)
    pairs = [("", " ".join(rng.choices(WORDS, k=16))) for _ in range(128)]
    lls, s, p = timed(lambda: score(lm.model, tok, pairs, batch_size=32, progress=False), device)
    out |= {"score_short_tokens_per_s": round(sum(x.n_tokens for x in lls) / s), "score_short_peak_gib": round(p - weights, 2)}
    longs = [("", " ".join(rng.choices(WORDS, k=long_words))) for _ in range(n_long)]
    lls, s, p = timed(lambda: score(lm.model, tok, longs, batch_size=4, progress=False), device)
    again = score(lm.model, tok, longs, batch_size=4, progress=False)
    out |= {"score_long_tokens": int(np.mean([x.n_tokens for x in lls])), "score_long_tokens_per_s": round(sum(x.n_tokens for x in lls) / s),
            "score_long_peak_gib": round(p - weights, 2), "repeat_identical": [x.logprob for x in lls] == [x.logprob for x in again]}  # fmt: skip
    layers = sorted(lm.moe_layers) if isinstance(lm.moe_layers[0], int) else list(range(cfg.num_hidden_layers))
    prof = pl.DataFrame({"layer": np.repeat(layers, lm.num_experts), "expert": np.tile(np.arange(lm.num_experts), len(layers)),
                         "phi": np.random.default_rng(0).random(len(layers) * lm.num_experts)})  # fmt: skip
    ctx = ConditionContext(prof, layers, lm.num_experts, lm.top_k)
    conds = [build("arr_layer", ctx, lam=1.0, layer=layer) for layer in layers]
    bench = get_benchmark("perplexity")
    items = [{"id": str(i), "text": t} for i, (_, t) in enumerate(longs)]
    suite = Suite("validation", {"perplexity": (bench, items)}, {}, max_length=None, max_logits_bytes=DEFAULT_MAX_LOGITS_BYTES)
    _, s, p = timed(lambda: score_conditions(lm, conds, suite, progress=False), device)
    out |= {"aals_conditions": len(conds), "aals_tokens_per_s": round(len(conds) * sum(x.n_tokens for x in lls) / s),
            "aals_peak_gib": round(p - weights, 2)}  # fmt: skip
    del lm
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes on CPU (a smoke test of this script)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="which shapes (default: all)")
    ap.add_argument("--qwen3-layers", type=int, default=8,
                    help="Qwen3-30B-A3B layers to build (48 = the whole model, ~57 GiB of bf16 weights)")
    args = ap.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tok = tokenizer()
    print(f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}), {dtype}, "
          f"torch {torch.__version__}, transformers {tf.__version__}", flush=True)  # fmt: skip
    results = []
    for name in args.shapes:
        cfg = SHAPES[name](args.tiny, args.qwen3_layers) if name.startswith("qwen3") else SHAPES[name](args.tiny)
        r = run_shape(name, cfg, device, dtype, tok, n_long=4 if args.tiny else 8, long_words=60 if args.tiny else 700)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
