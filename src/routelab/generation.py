"""Batched decoding under routing conditions: the engine of generation transfer (docs/method.md §5).

    from routelab.generation import DecodeParams, generate
    gens = generate(lm, ["the female", "the male"], DecodeParams(max_new_tokens=4),
                    conditions=[None, RoutingEdit.mask({2: [5]})])
    gens[0].text, gens[0].condition, gens[0].seed

Every (prompt, condition, sample) is one row of one batch: C conditions and S samples per
prompt are decoded together, each row under its own routing edit (routing.attach with per-row
conditions), the edit active at prefill and at every decoding step:

    rows (left-padded)        prefill: one forward over B rows × T tokens      decode: B rows × 1 token
    ┌─────────────────────┐   the router hook fires on B·T tokens, row b        each step, on B tokens,
    │ pad pad the female  │ → under condition ids[b]                       →   the same ids[b]; the KV
    │ pad pad the male    │   logits of the last real token → token 1          cache holds the prefix
    │ the old rich doctor │                                                    (edited) keys and values
    └─────────────────────┘

Positions follow the real tokens (position_ids = cumsum(mask) − 1), so a left-padded row
decodes exactly as it would alone. Only the last position's hidden state goes through the output
head, at prefill and at every step (what ``logits_to_keep=1`` does in transformers' generate, for
every family, including remote code that ignores it): logits are (B, V), never (B, T, V). Sampling is seeded per (prompt, sample): row (p, c, s) draws
from a generator seeded with (seed, p, s), so the baseline and every condition share their
random numbers (common random numbers: paired comparisons see only the condition's effect).
A family whose remote code has no working KV cache (``adapter.kv_cache = False``: DeepSeekMoE
on transformers 5.x) decodes without a cache: each step recomputes the whole prefix (cost
O(T²) instead of O(T) forwards' worth of tokens; the outputs are the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import polars as pl
import torch

from routelab.benchmarks import get_benchmark, load_items
from routelab.benchmarks.base import Benchmark, Item
from routelab import compute
from routelab.alternatives import AlternativesParams
from routelab.conditions import Condition, build
from routelab.config import check_choice, section
from routelab.errors import RoutelabError
from routelab.interventions import Suite, compare_suite, records, results_table, write_condition_tables
from routelab.masking import SCOPES, scoped_context
from routelab.progress import progress
from routelab.routing import RoutingEdit, attach
from routelab.scoring import decoder_and_head


@dataclass
class DecodeParams:
    """How to decode (part of the `generation:` params section)."""

    max_new_tokens: int = 20  # tokens generated after each prompt
    strategy: str = "greedy"  # greedy | sample
    temperature: float = 1.0  # sample: logits / temperature
    top_p: float = 1.0  # sample: nucleus mass kept (1.0 = all)
    samples: int = 1  # continuations per prompt (greedy: always 1)
    seed: int = 0  # sampling seed; row (prompt p, sample s) uses (seed, p, s)
    batch_size: int = 32  # rows (prompt × condition × sample) per batch

    def __post_init__(self) -> None:
        check_choice("generation.strategy", self.strategy, ("greedy", "sample"))
        if self.max_new_tokens < 1:
            raise RoutelabError(f"generation.max_new_tokens must be >= 1, found {self.max_new_tokens}")
        if self.strategy == "sample" and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise RoutelabError(f"generation.temperature must be a finite number > 0, found {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RoutelabError(f"generation.top_p must be in (0, 1], found {self.top_p}")
        if self.samples < 1 or self.batch_size < 1:
            raise RoutelabError(
                f"generation.samples and generation.batch_size must be >= 1, found {self.samples}, {self.batch_size}"
            )
        if self.strategy == "greedy":
            self.samples = 1  # greedy decoding is deterministic: more samples would be copies


@dataclass(frozen=True)
class Generation:
    """One decoded continuation."""

    prompt_index: int  # index into the prompts given
    condition: int  # index into the conditions given (0 when none)
    sample: int  # sample index (0 for greedy)
    seed: int | None  # the sampling seed of this row's generator; None for greedy
    prompt: str
    text: str  # the continuation, decoded (special tokens skipped)
    token_ids: tuple[int, ...]  # the generated ids (up to and including EOS when it came)
    stopped: bool  # True when EOS ended the row before max_new_tokens


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (B, V) with everything outside the top-p nucleus set to −inf (HF's TopPLogitsWarper)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _next_tokens(logits: torch.Tensor, params: DecodeParams, gens: list[torch.Generator | None]) -> torch.Tensor:
    """(B,) next token ids from last-position logits (B, V)."""
    if params.strategy == "greedy":
        return logits.argmax(dim=-1)
    probs = _nucleus(logits.float() / params.temperature, params.top_p).softmax(dim=-1)  # (B, V)
    return torch.stack([torch.multinomial(probs[b].cpu(), 1, generator=g)[0] for b, g in enumerate(gens)]).to(
        logits.device
    )


def _decode_batch(
    model: Any, tok: Any, prompt_ids: list[list[int]], params: DecodeParams, gens: list[torch.Generator | None],
    kv_cache: bool,
) -> tuple[list[list[int]], list[bool]]:
    """Greedy/sampled decoding of one batch of token-id prompts; returns (new ids, stopped)."""
    body, head = decoder_and_head(model)  # the head runs on the last position only (module docstring)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    B, T = len(prompt_ids), max(len(p) for p in prompt_ids)
    ids = torch.full((B, T), pad, dtype=torch.long)  # (B, T) left-padded
    mask = torch.zeros((B, T), dtype=torch.long)  # (B, T) 1 = real token
    for b, p in enumerate(prompt_ids):
        ids[b, T - len(p) :] = torch.tensor(p)
        mask[b, T - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    past = None
    step_ids, step_mask = ids, mask
    with torch.inference_mode():
        for step in range(params.max_new_tokens):
            pos = (step_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T') positions of the real tokens
            if kv_cache and past is not None:
                res = body(input_ids=step_ids[:, -1:], attention_mask=step_mask, position_ids=pos[:, -1:],
                           past_key_values=past, use_cache=True)  # fmt: skip
            else:
                res = body(input_ids=step_ids, attention_mask=step_mask, position_ids=pos, use_cache=kv_cache)
            past = res.past_key_values if kv_cache else None
            logits = head(res.last_hidden_state[:, -1, :])  # (B, V): the last position's logits, never (B, T', V)
            nxt = _next_tokens(logits, params, gens)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            for b in range(B):
                if not done[b]:
                    out[b].append(int(nxt[b]))
            if eos is not None:
                done = done | (nxt == eos)
            if bool(done.all()) or step == params.max_new_tokens - 1:
                break
            step_ids = torch.cat([step_ids, nxt[:, None]], dim=1)  # (B, T'+1)
            # a finished row keeps decoding pads (ignored); its mask stays 1 so shapes stay aligned
            step_mask = torch.cat([step_mask, torch.ones_like(nxt)[:, None]], dim=1)  # (B, T'+1)
    stopped = [bool(eos is not None and o and o[-1] == eos) for o in out]
    return out, stopped


def generate(
    lm: Any,
    prompts: Sequence[str],
    params: DecodeParams,
    *,
    conditions: Sequence[RoutingEdit | None] | None = None,
    prefixes: Sequence[str] | None = None,
    progress_label: str = "generate",
    show_progress: bool = True,
) -> list[Generation]:
    """Decode every prompt under every condition (``params.samples`` times each).

    ``conditions``: routing edits (None = no edit), one row of the batch each; default one
    condition with no edit. ``prefixes`` (optional, one per condition): text put before the
    prompt under that condition (prompt debiasing); the generation record keeps the bare prompt.
    Returns one Generation per (prompt, condition, sample), in that order.
    """
    if not prompts:
        raise RoutelabError("generate: no prompts given")
    conds = list(conditions) if conditions is not None else [None]
    pre = list(prefixes) if prefixes is not None else [""] * len(conds)
    if len(pre) != len(conds):
        raise RoutelabError(f"generate: {len(pre)} prefixes for {len(conds)} conditions; give one per condition")
    tok = lm.tokenizer
    encoded = {}  # (prompt index, condition) -> ids
    rows = []  # (prompt index, condition, sample)
    for p, text in enumerate(prompts):
        for c in range(len(conds)):
            ids = list(tok(pre[c] + text, add_special_tokens=True)["input_ids"])
            if not ids:
                raise RoutelabError(f"generate: prompt {p} ({text[:40]!r}) tokenises to nothing; drop it")
            encoded[p, c] = ids
            rows += [(p, c, s) for s in range(params.samples)]
    # longest first: the first batch shows an out-of-memory at once (as the scorer does)
    order = sorted(range(len(rows)), key=lambda i: -len(encoded[rows[i][:2]]))
    kv_cache = getattr(lm.adapter, "kv_cache", True)
    results: dict[int, Generation] = {}
    with attach(lm, conditions=conds) as session, progress(
        progress_label, total=len(rows), unit="rows", enabled=show_progress
    ) as bar:
        for start in range(0, len(order), params.batch_size):
            chunk = order[start : start + params.batch_size]
            session.use_conditions([rows[i][1] for i in chunk])
            gens = [None] * len(chunk)
            if params.strategy == "sample":
                gens = [torch.Generator().manual_seed(_row_seed(params.seed, rows[i][0], rows[i][2])) for i in chunk]
            new, stopped = _decode_batch(lm.model, tok, [encoded[rows[i][:2]] for i in chunk], params, gens, kv_cache)
            for j, i in enumerate(chunk):
                p, c, s = rows[i]
                results[i] = Generation(
                    prompt_index=p, condition=c, sample=s,
                    seed=_row_seed(params.seed, p, s) if params.strategy == "sample" else None,
                    prompt=prompts[p], text=tok.decode(new[j], skip_special_tokens=True),
                    token_ids=tuple(new[j]), stopped=stopped[j],
                )  # fmt: skip
            bar.advance(len(chunk))
    assert len(results) == len(rows), f"generation lost {len(rows) - len(results)} rows"
    return [results[i] for i in range(len(rows))]


def _row_seed(seed: int, prompt_index: int, sample: int) -> int:
    """A seed per (prompt, sample), independent of the condition and of the batch layout."""
    return int(np.random.SeedSequence([int(seed), int(prompt_index), int(sample)]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------------
# Generation transfer: protocols × conditions, scored, compared with the baseline (FARE Table 7)
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationParams:
    """The ``generation:`` section of params.yaml (stage `generation`)."""

    protocols: list[str] = field(default_factory=lambda: ["bold", "stereotype_completion"])  # a model's own list wins
    conditions: list[str] = field(default_factory=lambda: ["arr", "mask_top", "steer", "prompt_prefix"])
    mask_n: int = 4  # experts off in the mask_top / mask_bottom conditions (its own key: masking.n re-runs only masking)
    mask_layers: str = "all"  # where mask_top / mask_bottom choose them: all | aals (as masking.layers)
    max_new_tokens: int = 20
    strategy: str = "sample"  # greedy | sample
    temperature: float = 1.0
    top_p: float = 0.95
    samples: int = 4  # continuations per prompt (sample); per-item scores are their mean
    seed: int = 0
    batch_size: int = 32
    sample_sizes: dict[str, int] = field(default_factory=lambda: {"bold": 200})  # prompts per protocol, stratified
    classifiers: list[str] = field(default_factory=lambda: ["sentiment", "negative", "toxicity", "detoxify"])
    detoxify_checkpoint: str | None = None  # a local Detoxify .ckpt; null: the detoxify classifier is skipped
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # loader options per protocol

    def __post_init__(self) -> None:
        for name in self.protocols:
            if get_benchmark(name).output != "generation":
                raise RoutelabError(f"generation.protocols: {name} is not a generation protocol (output {get_benchmark(name).output})")
        bad = [c for c in self.conditions if c not in TRANSFER_CONDITIONS]
        if bad:
            raise RoutelabError(
                f"generation.conditions: unknown condition(s) {bad}; available: {', '.join(TRANSFER_CONDITIONS)}"
            )
        check_choice("generation.mask_layers", self.mask_layers, SCOPES)
        self.decode()  # checks the decoding keys

    def decode(self) -> DecodeParams:
        return DecodeParams(self.max_new_tokens, self.strategy, self.temperature, self.top_p, self.samples,
                            self.seed, self.batch_size)  # fmt: skip


# condition name in params -> what it is built from (docs/method.md §5: the likelihood stages' conditions)
TRANSFER_CONDITIONS = {
    "arr": "ARR at λ* on the AALS layers (arr_sweep)",
    "mask_top": "the top generation.mask_n experts by φ switched off",
    "mask_bottom": "the bottom generation.mask_n experts by φ switched off",
    "steer": "the SteerMoE A+/A− of the steer stage",
    "prompt_prefix": "the alternatives.prompt_prefix instruction before every prompt",
}


def stratified_sample(items: Sequence[Item], n: int | None, key: str | None, seed: int) -> list[Item]:
    """``n`` items taken round-robin over the strata of ``key`` (each stratum shuffled, seeded)."""
    if n is None or n >= len(items):
        return list(items)
    strata: dict[Any, list[Item]] = {}
    for it in items:
        strata.setdefault(it.get(key) if key else None, []).append(it)
    rng = np.random.default_rng(seed)
    queues = [[s[i] for i in rng.permutation(len(s))] for _, s in sorted(strata.items(), key=lambda kv: str(kv[0]))]
    out: list[Item] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out, key=lambda it: it["id"])


def run_protocols(
    lm: Any,
    protocols: dict[str, tuple[Benchmark, list[Item]]],
    conditions: Sequence[Condition],
    params: GenerationParams,
    classifiers: dict[str, Any],
) -> tuple[pl.DataFrame, dict[str, dict[str, pl.DataFrame]]]:
    """Decode every protocol's prompts under every condition, score the texts, build per-item rows.

    ``conditions[0]`` must be the baseline (no edit, no prefix). Returns (the generations table:
    one row per continuation with its prompt, condition, seed and scores; {condition: {protocol:
    per-item rows}}).
    """
    if conditions[0].edit is not None or conditions[0].prefix:
        raise RoutelabError("run_protocols: the first condition must be the baseline (no edit, no prefix)")
    decode = params.decode()
    table: list[dict[str, Any]] = []
    rows: dict[str, dict[str, pl.DataFrame]] = {c.name: {} for c in conditions}
    for name, (bench, items) in protocols.items():
        prompts = [bench.requests(it)[0] for it in items]
        gens = generate(lm, prompts, decode, conditions=[c.edit for c in conditions],
                        prefixes=[c.prefix for c in conditions], progress_label=f"generation {name}")  # fmt: skip
        texts = [g.text for g in gens]
        scores = {s: clf.score(texts) for s, clf in classifiers.items() if s in bench.classifiers}
        samples: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for j, g in enumerate(gens):
            rec = {"text": g.text, **{s: float(v[j]) for s, v in scores.items()}}
            samples.setdefault((g.condition, g.prompt_index), []).append(rec)
            own = bench.sample_scores(items[g.prompt_index], g.text) if bench.sample_scores else {}
            table.append({"protocol": name, "item": items[g.prompt_index]["id"], "prompt": g.prompt,
                          "condition": conditions[g.condition].name, "sample": g.sample, "seed": g.seed,
                          "continuation": g.text, "stopped": g.stopped, **own,
                          **{s: float(v[j]) for s, v in scores.items()}})  # fmt: skip
        for ci, cond in enumerate(conditions):
            per = [bench.per_item(it, samples[(ci, i)]) for i, it in enumerate(items)]
            rows[cond.name][name] = pl.DataFrame(per, infer_schema_length=None)
    return pl.DataFrame(table, infer_schema_length=None), rows


def protocol_items(spec: Any, cfg: GenerationParams, paths: dict[str, str | None]) -> dict[str, tuple[Benchmark, list[Item]]]:
    """The prompts of every protocol the model runs (its own list, else generation.protocols),
    loaded and sampled before any model is loaded."""
    names = spec.generation if spec.generation is not None else cfg.protocols
    out = {}
    for name in names:
        bench = get_benchmark(name)
        if bench.output != "generation":
            raise RoutelabError(f"models.<name>.generation: {name} is not a generation protocol")
        options = dict(cfg.options.get(name) or {})
        if bench.builtin:
            items = bench.load(**options)
        else:
            items = load_items(bench, spec.benchmarks.get(name) or paths.get(name), **options)
        out[name] = (bench, stratified_sample(items, cfg.sample_sizes.get(name), bench.stratify_key, cfg.seed))
    return out


def transfer_table(
    protocols: dict[str, tuple[Benchmark, list[Item]]],
    rows: dict[str, dict[str, pl.DataFrame]],
    stats: Any,
) -> list[Any]:
    """Every (condition, protocol, metric) against the baseline, paired over prompts; BH across the table."""
    suite = Suite("all", protocols, {name: rows["baseline"][name] for name in protocols})
    metrics = {
        name: [m for m in bench.headline if all(c in rows["baseline"][name].columns for c in bench.metrics[m].columns)]
        for name, (bench, _) in protocols.items()
    }
    others = {c: r for c, r in rows.items() if c != "baseline"}
    return compare_suite(suite, others, stats, metrics=metrics)


def conditions(run: Any, cfg: GenerationParams, sweep: dict[str, Any], steering: pl.DataFrame) -> list[Condition]:
    """The baseline, then each condition of generation.conditions, named as in params; one that
    cannot change anything (λ* = 0, no SteerMoE expert, no AALS layer) is skipped with the reason."""
    ctx = run.inputs.context(sweep["layers"], run.stats.seed)
    mask_ctx = scoped_context(run.inputs, cfg.mask_layers, sweep["layers"], run.stats.seed)  # sweep: the AALS layers
    prefix = section(AlternativesParams, run.inputs.params.get("alternatives"), "alternatives").prompt_prefix
    out = [build("baseline", ctx)]
    for name in cfg.conditions:
        if name == "arr" and (sweep["lambda_star"] == 0 or not sweep["layers"]):
            run.skip("arr", f"λ* = 0: ARR is the unedited model ({sweep['reason']})")
        elif name == "steer" and steering.height == 0:
            run.skip("steer", "the steer stage selected no expert")
        elif name in ("mask_top", "mask_bottom") and mask_ctx is None:
            run.skip(name, "generation.mask_layers = aals and AALS selected no layer")
        else:
            make = {
                "arr": lambda: build("arr", ctx, lam=sweep["lambda_star"]),
                "mask_top": lambda: build("mask_top", mask_ctx, n=cfg.mask_n),
                "mask_bottom": lambda: build("mask_bottom", mask_ctx, n=cfg.mask_n),
                "steer": lambda: build("steer", ctx, table=steering),
                "prompt_prefix": lambda: build("prompt_prefix", ctx, text=prefix),
            }[name]
            out.append(replace(make(), name=name))
    return out


def run_transfer(run: Any, protocols: dict[str, tuple[Benchmark, list[Item]]], conds: Sequence[Condition],
                 classifiers: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], pl.DataFrame]:  # fmt: skip
    """Decode, score, compare (Table 7): (the stage's result, its comparison records, the
    generations table). Writes the per-prompt rows under ``run.out``."""
    cfg: GenerationParams = run.cfg
    table, rows = run_protocols(run.lm, protocols, conds, cfg, classifiers)
    write_condition_tables(run.out, rows, "all")
    comps = transfer_table(protocols, rows, run.stats)
    result = {
        "protocols": {name: len(items) for name, (_, items) in protocols.items()},
        "conditions": {c.name: c.settings for c in conds},
        "classifiers": sorted(classifiers),
        "decode": cfg.decode().__dict__,
        "results": results_table(comps),
    }
    if run.skipped:
        result["skipped"] = dict(run.skipped)
    result["compute"] = compute.label()
    return result, records(comps), table
