"""Scorer memory and speed: the chunked scorer vs the pre-issue-20 scorer vs a full-logits one (not a test).

Usage:
    .venv/bin/python bench/scoring_memory.py                   # the grid and the issue's perplexity row
    .venv/bin/python bench/scoring_memory.py --vocab 32000 --context 128 --no-perplexity   # one cell
    .venv/bin/python bench/scoring_memory.py --json out.json

Every measurement runs in a fresh subprocess (python bench/scoring_memory.py --child '<spec>'): it
builds a random-init OLMoE (hidden 64, 2 layers, 8 experts top-2; no download) with the cell's
vocabulary, warms the scorer up on one request, resets the process's peak RSS (/proc/self/clear_refs),
scores, and reports its peak RSS (VmHWM), its RSS before scoring and the wall time. "scoring MB" is
peak − before: the memory the scoring itself took (logits, activations), without torch and the model.

Scorers, on the same requests and batches (longest first, right padding):
  chunked  routelab.scoring.score_tokens with the default max_logits_bytes (256 MiB)
  today    the scorer before issue 20, copied below: the model's forward with logits_to_keep from the
           batch's earliest scored position, (B, T', V) float32 logits, logsumexp over them
  full     one forward with every position's logits and a full log_softmax (the textbook scorer)

Grid cells: requests of ``context`` tokens followed by a continuation of context/4 tokens (the
TruthfulQA shape: most of each sequence is context), 4,096 context tokens in all (at least 8
requests), batch 4; tokens/s from the best of 3 runs, peak RSS over all of them. The perplexity row reproduces issue 20's
measurement: a random OLMoE with Qwen3's vocabulary (151,936) and hidden 64, 20 lines of ~2,100 tokens
(ByT5 bytes), max_position_embeddings 2048, batch 4, through routelab.benchmarks.run_benchmark as
`routelab bench --benchmark perplexity --batch-size 4` runs it; Done-when: peak RSS under 2.5 GB.
Timings depend on what else the machine runs: compare them only from a quiet machine.
"""

import routelab  # noqa: F401  first: pins the compute path before torch loads (routelab.compute)

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

GRID_VOCABS = (32000, 50257, 151936)  # Llama/Mistral, GPT-2/OLMo, Qwen2/3
GRID_CONTEXTS = (128, 1024)
SCORERS = ("chunked", "today", "full")


# --------------------------------------------------------------------------------------------
# The model and the requests
# --------------------------------------------------------------------------------------------


def random_olmoe(vocab: int, max_positions: int, seed: int = 0) -> Any:
    """A small random-init OLMoE whose head has ``vocab`` rows (hidden 64): the head dominates memory."""
    torch.manual_seed(seed)
    cfg = transformers.OlmoeConfig(vocab_size=vocab, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                                   max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=1,
                                   pad_token_id=0)  # fmt: skip
    return transformers.OlmoeForCausalLM(cfg).eval()


def grid_requests(context: int, vocab: int, n: int | None = None, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` (context, continuation) token requests (default: 4,096 context tokens' worth, at least 8):
    ``context`` tokens, then context/4 scored ones."""
    n = n or max(8, 4096 // context)
    gen = torch.Generator().manual_seed(seed)
    cont = max(1, context // 4)
    return [(torch.randint(2, vocab, (context,), generator=gen).tolist(),
             torch.randint(2, vocab, (cont,), generator=gen).tolist()) for _ in range(n)]  # fmt: skip


def perplexity_lines(n: int = 20, chars: int = 2100, seed: int = 0) -> list[str]:
    """``n`` lines of about ``chars`` characters of lowercase words (ByT5: one token per byte)."""
    gen = torch.Generator().manual_seed(seed)
    words = ["the", "doctor", "examined", "patient", "nurse", "wrote", "a", "note", "and", "of", "river", "city"]
    lines = []
    for _ in range(n):
        line = ""
        while len(line) < chars:
            line += words[int(torch.randint(0, len(words), (1,), generator=gen))] + " "
        lines.append(line.strip() + ".")
    return lines


# --------------------------------------------------------------------------------------------
# The scorer before issue 20 (a copy, kept here and not in the library) and a full-logits one
# --------------------------------------------------------------------------------------------


def _longest_first(requests):
    return sorted(range(len(requests)), key=lambda i: (-(len(requests[i][0]) + len(requests[i][1])), requests[i]))


def _batch(requests, chunk, pad_token_id=0):
    """(inp, attn, tgt, is_cont, first scored position) of one right-padded batch (the old _batch)."""
    seqs = [list(requests[i][0]) + list(requests[i][1]) for i in chunk]
    conts = [len(requests[i][1]) for i in chunk]
    B, T = len(chunk), max(len(s) - 1 for s in seqs)
    inp = torch.full((B, T), pad_token_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    tgt = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    is_cont = torch.zeros((B, T), dtype=torch.bool)  # (B, T)
    for b, (seq, c) in enumerate(zip(seqs, conts)):
        L = len(seq) - 1
        inp[b, :L], attn[b, :L], tgt[b, :L] = torch.tensor(seq[:-1]), 1, torch.tensor(seq[1:])
        is_cont[b, L - c : L] = True
    first = min(len(s) - 1 - c for s, c in zip(seqs, conts))
    return inp, attn, tgt, is_cont, first


@torch.inference_mode()
def todays_score_tokens(model, requests, batch_size: int) -> list[tuple[float, bool]]:
    """The scorer before issue 20: logits_to_keep from the batch's first scored position, then
    z_target − logsumexp(z) and the argmax over (B, T', V) float32 logits. [(logprob, greedy)]."""
    out: dict[int, tuple[float, bool]] = {}
    order = _longest_first(requests)
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        inp, attn, tgt, is_cont, first = _batch(requests, chunk)
        logits = model(input_ids=inp, attention_mask=attn, logits_to_keep=torch.arange(first, inp.shape[1]),
                       use_cache=False).logits.float()  # (B, T', V)
        lse = torch.logsumexp(logits, dim=-1)  # (B, T')
        z = logits.gather(-1, tgt[:, first:].unsqueeze(-1)).squeeze(-1)  # (B, T')
        mask = is_cont[:, first:]  # (B, T')
        ll = torch.where(mask, z - lse, torch.zeros_like(lse)).sum(dim=-1)  # (B,)
        greedy = ((logits.argmax(dim=-1) == tgt[:, first:]) | ~mask).all(dim=-1)  # (B,)
        del logits, lse
        out.update({i: (float(ll[b]), bool(greedy[b])) for b, i in enumerate(chunk)})
    return [out[i] for i in range(len(requests))]


@torch.inference_mode()
def full_score_tokens(model, requests, batch_size: int) -> list[tuple[float, bool]]:
    """One forward with every position's logits, a full log_softmax (B, T, V) and the argmax."""
    out: dict[int, tuple[float, bool]] = {}
    order = _longest_first(requests)
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        inp, attn, tgt, is_cont, _ = _batch(requests, chunk)
        logp = torch.log_softmax(model(input_ids=inp, attention_mask=attn, use_cache=False).logits.float(), dim=-1)
        picked = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T)
        ll = torch.where(is_cont, picked, torch.zeros_like(picked)).sum(dim=-1)  # (B,)
        greedy = ((logp.argmax(dim=-1) == tgt) | ~is_cont).all(dim=-1)  # (B,)
        del logp
        out.update({i: (float(ll[b]), bool(greedy[b])) for b, i in enumerate(chunk)})
    return [out[i] for i in range(len(requests))]


def chunked_score_tokens(model, requests, batch_size: int) -> list[tuple[float, bool]]:
    from routelab.scoring import score_tokens

    return [(x.logprob, x.greedy) for x in score_tokens(model, requests, batch_size=batch_size, progress=False)]


# --------------------------------------------------------------------------------------------
# One measurement (the child process) and the table (the parent)
# --------------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _perplexity_job(batch: int):
    """(run, warm-up, n input tokens) of the issue's `routelab bench --benchmark perplexity --batch-size 4`."""
    from routelab.benchmarks import get_benchmark, run_benchmark

    model, tok = random_olmoe(151936, 2048), transformers.ByT5Tokenizer()
    items = [{"id": str(i), "text": t} for i, t in enumerate(perplexity_lines())]

    def run(its):
        _, rows = run_benchmark(model, tok, get_benchmark("perplexity"), items=its, batch_size=batch, n_bootstrap=10,
                                progress=False)  # fmt: skip
        return [(ll, None) for ll in rows["ll"].to_list()]

    return (lambda: run(items)), (lambda: run(items[:1])), sum(len(it["text"]) for it in items)


def _grid_job(spec: dict[str, Any]):
    """(run, warm-up, n input tokens) of one scorer on one grid cell."""
    model = random_olmoe(spec["vocab"], 2048)
    reqs = grid_requests(spec["context"], spec["vocab"])
    fn = {"chunked": chunked_score_tokens, "today": todays_score_tokens, "full": full_score_tokens}[spec["scorer"]]
    warm = grid_requests(8, spec["vocab"], n=1)
    n_tokens = sum(len(c) + len(k) - 1 for c, k in reqs)
    return (lambda: fn(model, reqs, spec["batch_size"])), (lambda: fn(model, warm, 1)), n_tokens


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scorer on one cell in this process; its peak RSS, its RSS before scoring, the time, the LLs."""
    run, warm, n_tokens = _perplexity_job(spec["batch_size"]) if spec["cell"] == "perplexity" else _grid_job(spec)
    warm()  # kernels and allocator warm: the peak below is the scoring's, not the first call's setup
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status()["VmRSS"]
    seconds = []
    for _ in range(spec.get("repeats", 3)):  # the best of a few: a shared machine slows some runs
        t0 = time.perf_counter()
        lls = run()
        seconds.append(time.perf_counter() - t0)
    seconds = min(seconds)
    return {**spec, "peak": _status()["VmHWM"], "before": before, "seconds": seconds, "tokens": n_tokens, "lls": lls}


def child_run(spec: dict[str, Any]) -> dict[str, Any]:
    """``measure`` in a fresh Python process (nothing allocated before it counts)."""
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def grid_rows(vocabs, contexts, batch_size: int) -> list[dict[str, Any]]:
    rows = []
    for V in vocabs:
        for C in contexts:
            runs = {s: child_run({"cell": "grid", "scorer": s, "vocab": V, "context": C, "batch_size": batch_size})
                    for s in SCORERS}  # fmt: skip
            mb = {s: (r["peak"] - r["before"]) / 2**20 for s, r in runs.items()}
            tps = {s: r["tokens"] / r["seconds"] for s, r in runs.items()}
            ref = runs["chunked"]["lls"]
            dll = {s: max(abs(a[0] - b[0]) for a, b in zip(ref, runs[s]["lls"])) for s in ("today", "full")}
            same_greedy = all(a[1] == b[1] for s in ("today", "full") for a, b in zip(ref, runs[s]["lls"]))
            peak = {s: r["peak"] / 2**20 for s, r in runs.items()}
            rows.append({"vocab": V, "context": C, "scoring_mb": mb, "peak_mb": peak, "tokens_per_s": tps,
                         "max_abs_dll": dll, "same_greedy": same_greedy})  # fmt: skip
            print(f"{V:>7} {C:>5} | {mb['chunked']:7.0f} {mb['today']:7.0f} {mb['full']:7.0f} | "
                  f"{mb['today'] / mb['chunked']:6.1f}x {mb['full'] / mb['chunked']:6.1f}x | "
                  f"{tps['chunked']:7.0f} {tps['today']:7.0f} {tps['full']:7.0f} | "
                  f"{tps['chunked'] / tps['today']:5.2f} | {dll['today']:.1e} {dll['full']:.1e} | {same_greedy}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, nargs="*", default=list(GRID_VOCABS), help="grid vocabularies")
    ap.add_argument("--context", type=int, nargs="*", default=list(GRID_CONTEXTS), help="grid context lengths")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-perplexity", action="store_true", help="skip the issue's perplexity row")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; each cell: 4,096 context tokens, "
          f"batch {args.batch_size}, continuation = context/4; scoring MB = peak RSS − RSS before scoring")
    print("columns: scoring MB (chunked, today, full) | memory today/chunked, full/chunked | tokens/s (chunked, "
          "today, full) | speed chunked/today | max |ΔLL| of chunked vs today, vs full | same greedy flags")
    print(f"{'vocab':>7} {'ctx':>5} | {'chunked':>7} {'today':>7} {'full':>7} | {'today':>7} {'full':>7} | "
          f"{'chunked':>7} {'today':>7} {'full':>7} | {'speed':>5} | ΔLL today, full | greedy")
    rows = grid_rows(args.vocab, args.context, args.batch_size)
    result: dict[str, Any] = {"grid": rows}
    if not args.no_perplexity:
        r = child_run({"cell": "perplexity", "scorer": "chunked", "batch_size": 4, "repeats": 1})
        peak_gb = r["peak"] / 1e9
        verdict = "under" if peak_gb < 2.5 else "OVER"
        print(f"perplexity (issue 20): vocab 151936, hidden 64, 20 lines × ~2,100 tokens, batch 4, default "
              f"max_logits_bytes: peak RSS {peak_gb:.2f} GB ({verdict} 2.5 GB; the issue measured 8.13 GB "
              f"before), {r['tokens'] / r['seconds']:.0f} tokens/s")
        result["perplexity"] = {k: r[k] for k in ("peak", "before", "seconds", "tokens")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
