"""Generated tokens per second: routelab's batched engine vs a one-prompt-at-a-time generate loop.

Usage: python bench/generation.py --model data/models/diffuse [--prompts 64] [--new-tokens 8] [--repeats 3]

The prompts are the testbed's own sentence beginnings ("the <descriptor>", "the <profession>",
"the <descriptor> <profession>"). Greedy decoding, no routing edit, EOS disabled so every row
makes exactly --new-tokens tokens: the engine (routelab.generation.generate, left-padded
batches with the KV cache and the routing hook attached) must give the same tokens as
`model.generate` called on one prompt at a time. Prints tokens/s for both and their ratio.
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: pins the compute path before torch, numpy and pyarrow load)

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from routelab.generation import DecodeParams, generate  # noqa: E402
from routelab.models import ModelSpec, load_model  # noqa: E402
from routelab.testbed import load_vocabulary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/diffuse")
    ap.add_argument("--vocabulary", default=None, help="testbed corpus folder (default: the model's sibling corpus)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lm = load_model(ModelSpec(path=args.model, dtype="float32", device="cpu"))
    words = lm.tokenizer.get_vocab()
    descriptors = [w for w in ("female", "male", "black", "white", "old", "young", "poor", "rich") if w in words]
    professions = [w for w in ("doctor", "nurse", "teacher", "pilot", "judge", "chef", "baker", "clerk") if w in words]
    prompts = [f"the {d}" for d in descriptors] + [f"the {p}" for p in professions]
    prompts += [f"the {d} {p}" for d in descriptors for p in professions]
    prompts = (prompts * (args.prompts // len(prompts) + 1))[: args.prompts]
    eos, lm.tokenizer.eos_token_id = lm.tokenizer.eos_token_id, None  # exactly --new-tokens per row
    params = DecodeParams(max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    n_tokens = len(prompts) * args.new_tokens

    def loop():
        out = []
        with torch.inference_mode():
            for text in prompts:
                ids = lm.tokenizer(text, return_tensors="pt")
                gen = lm.model.generate(**ids, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                        pad_token_id=lm.tokenizer.pad_token_id)
                out.append(tuple(gen[0, ids["input_ids"].shape[1]:].tolist()))
        return out

    t_loop, t_eng = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        t0 = time.perf_counter()
        ref = loop()
        t_loop.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = [g.token_ids for g in generate(lm, prompts, params, show_progress=False)]
        t_eng.append(time.perf_counter() - t0)
    lm.tokenizer.eos_token_id = eos
    same = sum(a == b for a, b in zip(ref, got))
    ml, me = statistics.median(t_loop), statistics.median(t_eng)
    print(f"{len(prompts)} prompts × {args.new_tokens} new tokens, greedy, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; identical outputs: {same}/{len(prompts)}")
    print(f"one prompt at a time (model.generate): {n_tokens / ml:.0f} tokens/s (median of {args.repeats}: {ml:.2f} s)")
    print(f"routelab engine (batched, KV cache):   {n_tokens / me:.0f} tokens/s (median of {args.repeats}: {me:.2f} s)")
    print(f"speed-up {ml / me:.2f}×")


if __name__ == "__main__":
    main()
