"""Scorer throughput: the batched engine vs a naive one-item-at-a-time loop (not a test).

Usage:
    .venv/bin/python bench/scoring.py                       # the diffuse testbed if built, else a random OLMoE
    .venv/bin/python bench/scoring.py --model data/models/diffuse --n-items 256 --batch-size 32

Both paths score the same (context, continuation) requests on the same model: CrowS-Pairs
sentences after BOS and BBQ questions with their answers (from ../shared/benchmarks when
present, else generated sentences). The naive loop runs one unpadded sequence per forward
and a full log_softmax; the batched path is routelab.scoring.score. Prints tokens/s for both,
the ratio, and the largest |LL difference| between them.
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: pins the compute path before torch, numpy and pyarrow load)

import argparse
import json
import sys
import time
from pathlib import Path

import torch  # noqa: E402

from routelab.scoring import encode_pair, score  # noqa: E402

TESTBED = Path("data/models/diffuse")  # the default testbed (dvc repro testbed_train@diffuse)
SHARED = Path("../shared/benchmarks")


def random_olmoe(seed: int = 0):
    """A small random-init OLMoE over ByT5's byte vocabulary (no files, no network)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.OlmoeConfig(
        vocab_size=384,
        hidden_size=128,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
    )
    label = "random OLMoE (4 layers, 8 experts top-2, d=128, ByT5 bytes)"
    return transformers.OlmoeForCausalLM(cfg).eval(), transformers.ByT5Tokenizer(), label


def load(model_dir: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, tok, str(model_dir)


def make_requests(n: int) -> list[tuple[str, str]]:
    """Half CrowS-style (empty context), half BBQ-style (context + answer): varied lengths."""
    reqs: list[tuple[str, str]] = []
    try:
        from routelab.benchmarks import get_benchmark, load_items

        crows, bbq = get_benchmark("crows_pairs"), get_benchmark("bbq")
        pool_a = [r for it in load_items(crows, SHARED / "crows_pairs/crows_pairs_anonymized.csv") for r in crows.requests(it)]
        pool_b = [r for it in load_items(bbq, SHARED / "bbq", categories=["Age"]) for r in bbq.requests(it)]
    except Exception:  # no shared data: generated sentences of varied length
        pool_a = [("", "the doctor " + "very " * (i % 17) + "examined the patient .") for i in range(n)]
        pool_b = [(f"Q: who was there {'again ' * (i % 9)}?\nA:", " the nurse") for i in range(n)]
    for i in range(n):
        reqs.append(pool_a[i * 7 % len(pool_a)] if i % 2 == 0 else pool_b[i * 13 % len(pool_b)])
    return reqs


@torch.inference_mode()
def naive(model, tokenizer, requests) -> list[float]:
    """One unpadded sequence per forward, full-vocabulary log_softmax."""
    out = []
    device = next(model.parameters()).device
    for ctx, cont in requests:
        c, k = encode_pair(tokenizer, ctx, cont)
        ids = torch.tensor([c + k], device=device)  # (1, L)
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (L, V)
        pos = torch.arange(len(c) - 1, len(c) - 1 + len(k), device=device)  # (K,) predicting k
        out.append(float(logp[pos, torch.tensor(k, device=device)].sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=None, help=f"model folder (default: {TESTBED})")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--n-items", type=int, default=128, help="number of requests")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-mask", action="store_true", help="score without the attention mask")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = args.model or (TESTBED if (TESTBED / "config.json").exists() else None)
    model, tok, label = load(path) if path else random_olmoe()
    model.to(args.device)
    reqs = make_requests(args.n_items)
    n_tokens = sum(len(c) + len(k) - 1 for c, k in (encode_pair(tok, *r) for r in reqs))  # model inputs

    naive(model, tok, reqs[:2])  # warm-up
    score(model, tok, reqs[: args.batch_size], batch_size=args.batch_size, progress=False)

    t0 = time.perf_counter()
    ref = naive(model, tok, reqs)
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = score(model, tok, reqs, batch_size=args.batch_size, progress=False, attention_mask=not args.no_mask)
    t_batched = time.perf_counter() - t0

    max_diff = max(abs(a - b.logprob) for a, b in zip(ref, got))
    result = {
        "model": label,
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "n_items": len(reqs),
        "input_tokens": n_tokens,
        "batch_size": args.batch_size,
        "attention_mask": not args.no_mask,
        "naive_tokens_per_s": n_tokens / t_naive,
        "batched_tokens_per_s": n_tokens / t_batched,
        "speedup": t_naive / t_batched,
        "max_abs_ll_diff": max_diff,
    }
    print(f"model            {label}  ({result['threads']} threads)")
    print(f"requests         {len(reqs)}  ({n_tokens} input tokens)")
    print(f"naive loop       {result['naive_tokens_per_s']:10.0f} tokens/s  ({t_naive:.2f} s)")
    batched = result["batched_tokens_per_s"]
    print(f"batched (bs={args.batch_size:<3}) {batched:10.0f} tokens/s  ({t_batched:.2f} s)")
    print(f"speedup          {result['speedup']:.1f}x   max |ΔLL| {max_diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
