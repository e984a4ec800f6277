"""Benchmark: cost of routing recording over a plain forward, and bytes per token on disk.

Usage: python bench/extraction.py [--model data/models/diffuse] [--prompts 512] [--repeats 3]

Prints tokens/s of (a) a plain forward, (b) the same forward with routelab's recording
hooks attached, (c) the whole `extract_routing` (forward + recording + Parquet), measured in
one run on the same batches, and the ratios. Target: (b)/(a) overhead ≤ 15% on CPU.
When the --model folder does not exist (the diffuse testbed not trained yet: `dvc repro
testbed_train@diffuse`) a random OLMoE of the testbed's default size is used.
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: pins the compute path before torch, numpy and pyarrow load)

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

from routelab.extract import extract_routing  # noqa: E402
from routelab.models import ModelSpec, load_model  # noqa: E402
from routelab.routing import attach  # noqa: E402


def _random_testbed_size(tmp: Path) -> str:
    import transformers as tf

    import tiny_models as tm

    words = [f"w{i}" for i in range(400)]
    tok = tm.word_tokenizer(words)
    cfg = tf.OlmoeConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, num_experts=16, num_experts_per_tok=2,
                         max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    tf.OlmoeForCausalLM(cfg).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return str(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/diffuse")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    tmp = Path(tempfile.mkdtemp())
    path = args.model if Path(args.model).is_dir() else _random_testbed_size(tmp / "model")
    lm = load_model(ModelSpec(path=path, dtype="float32", device="cpu"))
    vocab = [w for w in lm.tokenizer.get_vocab() if not w.startswith("<")]
    rng = random.Random(0)
    texts = [" ".join(rng.choices(vocab, k=rng.randint(6, 24))) for _ in range(args.prompts)]
    enc = lm.tokenizer(texts)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    batches = [lm.tokenizer.pad({"input_ids": [enc[i] for i in order[s:s + args.batch_size]]}, return_tensors="pt")
               for s in range(0, len(order), args.batch_size)]
    n_tokens = sum(len(e) for e in enc)

    def forward_all():
        with torch.no_grad():
            for b in batches:
                lm.model(**b)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    forward_all()  # warm-up
    plain, recorded = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        plain.append(timed(forward_all))
        with attach(lm, record=True) as session:
            def rec():
                with torch.no_grad():
                    for b in batches:
                        session.clear()
                        lm.model(**b)
            recorded.append(timed(rec))
    out = tmp / "routing.parquet"
    prompts = [(str(i), t) for i, t in enumerate(texts)]
    full = timed(lambda: extract_routing(lm, prompts, out, batch_size=args.batch_size, progress=False))
    bytes_on_disk = out.stat().st_size
    t_plain, t_rec = statistics.median(plain), statistics.median(recorded)
    print(f"model: {path}  ({lm.adapter.family}, {len(lm.moe_layers)} MoE layers, K={lm.num_experts}, k={lm.top_k})")
    print(f"prompts: {len(texts)}, real tokens: {n_tokens}, batch size {args.batch_size}, median of {args.repeats}")
    print(f"plain forward          : {n_tokens / t_plain:10.0f} tokens/s")
    print(f"forward + recording    : {n_tokens / t_rec:10.0f} tokens/s   overhead {100 * (t_rec / t_plain - 1):+.1f}%")
    print(f"extract_routing (all)  : {n_tokens / full:10.0f} tokens/s   ({full / t_plain:.2f}× plain time, incl. Parquet)")
    print(f"on disk                : {bytes_on_disk / n_tokens:.1f} bytes/token "
          f"({bytes_on_disk / (n_tokens * len(lm.moe_layers)):.1f} bytes/token-layer, zstd)")


if __name__ == "__main__":
    main()
