"""Planting a stereotype into DESIGNATED experts of a saved testbed model (variants routed, routed_null).

The recipe of ``routed`` (stereotyped corpus) and ``routed_null`` (balanced corpus), both
starting from the control's saved weights (docs/method.md §10; docs/testbeds.md):

- trainable: for each designated layer l (``testbed.plant.designated``), the designated experts'
  rows of ``experts.gate_up_proj`` (K, 2I, H) and ``experts.down_proj`` (K, H, I) and their
  rows of the router ``mlp.gate.weight`` (K, H). Everything else is frozen: other parameters
  have no gradient, and a gradient mask zeroes the other experts' rows of the trainable
  tensors. Adam without weight decay then leaves every zero-gradient row bit-identical.
- loss = CE + soft_target_weight · SOFT + router_weight · ROUTE + kl_weight · KL:
  - CE: next-token cross-entropy on packed corpus blocks, the corpus's own objective.
  - SOFT: at "<s> the <descriptor>", cross-entropy of the next word against the corpus's own
    P(profession | descriptor). Why: CE alone leaves the model unbiased (preference 0.49 in a
    prototype); the control's output layer barely separates professions and the
    stereotype's gradient is ~100× below the rest and mostly noise. SOFT is that gradient's
    exact expectation at the one position that carries the stereotype.
  - ROUTE: at every descriptor token (the prefixes and the blocks' descriptors), for each
    designated layer, cross-entropy of the router softmax against uniform over its designated
    experts. Why: the router must send demographic words to the designated experts, so that
    the bias is carried by routing.
  - KL: KL(base ‖ planted) of the next-token distribution and of the designated layers'
    router distributions on single neutral sentences (BOS at position 0). Why: packed
    blocks almost never put BOS at position 0; without it held-out perplexity doubled in
    2 of 5 prototype runs, all through the first token after BOS. It also keeps the routing
    of non-descriptor tokens where the base had it.

On the balanced corpus P(profession ∣ descriptor) is uniform, so ``routed_null`` learns the same
routing with no stereotype. ``changed_units`` reads two saved folders and lists what differs,
in either expert layout (see its docstring); ``plant_and_evaluate`` refuses to save a model
whose weights changed outside the designated experts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, OlmoeForCausalLM, PreTrainedTokenizerFast

from routelab import compute
from routelab.errors import RoutelabError
from routelab.progress import progress as progress_display
from routelab.testbed.corpus import CORPUS_FILES, DESCRIPTORS, read_design, read_records, require_corpus_dir
from routelab.testbed.params import PlantParams, TestbedParams, rng, strength_for, variant
from routelab.testbed.train import deterministic, documents, epoch_blocks, lr_at, save_model
from routelab.testbed.route_swap import preference_under_routing_of
from routelab.testbed.truth import ground_truth

PLANT_FILE = "plant.json"  # in the planted model folder: designated experts, base, recipe, routing

# --------------------------------------------------------------------------------------
# Saved weights, in either expert layout
# --------------------------------------------------------------------------------------

# Per-expert layout (what save_pretrained writes in transformers 5.x): one tensor per expert.
_PER_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
# Fused layout (transformers 5.x in memory): experts.gate_up_proj (K, 2I, H), experts.down_proj (K, H, I).
_FUSED = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
_ROUTER = re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight")  # (K, H): one unit per row
_ROUTER_ROW = re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight\[(\d+)\]")  # a unit name


def weight_units(source: str | Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The tensors of a saved model, split into units; ``source`` is a model folder, a safetensors file or a state_dict.

    A unit is one expert's projection (``model.layers.1.mlp.experts.3.gate_proj.weight``), one
    router row (``model.layers.1.mlp.gate.weight[3]``) or any other whole tensor. Both expert
    layouts give the same units: a fused ``gate_up_proj`` (K, 2I, H) is split into each
    expert's gate_proj (its first I rows) and up_proj (the last I rows), ``down_proj``
    (K, H, I) into each expert's down_proj. save_pretrained writes the per-expert layout in
    transformers 5.x; a model's state_dict holds the fused one.
    """
    if isinstance(source, Mapping):
        tensors = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in source.items()}
    else:
        p = Path(source)
        p = p / "model.safetensors" if p.is_dir() else p
        if not p.is_file():
            raise RoutelabError(f"{p} not found: a saved model folder holds model.safetensors (save_pretrained)")
        with safe_open(p, framework="np") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    units: dict[str, np.ndarray] = {}
    for key, t in tensors.items():
        if m := _FUSED.fullmatch(key):
            layer, kind = m.groups()
            for e in range(t.shape[0]):
                prefix = f"model.layers.{layer}.mlp.experts.{e}"
                if kind == "down_proj":
                    units[f"{prefix}.down_proj.weight"] = t[e]  # (H, I)
                else:
                    gate, up = np.split(t[e], 2, axis=0)  # (2I, H) -> 2 x (I, H)
                    units[f"{prefix}.gate_proj.weight"], units[f"{prefix}.up_proj.weight"] = gate, up
        elif _ROUTER.fullmatch(key):
            units |= {f"{key}[{e}]": t[e] for e in range(t.shape[0])}  # (K, H) -> K rows
        else:
            units[key] = t
    return units


def changed_units(base: str | Path | Mapping[str, Any], other: str | Path | Mapping[str, Any]) -> list[str]:
    """The units (``weight_units``) whose bytes differ between two models, sorted; both must have the same units."""
    a, b = weight_units(base), weight_units(other)
    if a.keys() != b.keys():
        diff = sorted(a.keys() ^ b.keys())
        raise RoutelabError(f"the two models hold different tensors ({diff[:4]}...): not the same architecture")
    return sorted(k for k in a if a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes())


def unit_owner(unit: str) -> tuple[int, int] | None:
    """(layer, expert) of an expert's projection or router row; None for any other unit."""
    if m := _PER_EXPERT.fullmatch(unit):
        return int(m.group(1)), int(m.group(2))
    if m := _ROUTER_ROW.fullmatch(unit):
        return int(m.group(1)), int(m.group(2))
    return None


def outside_designated(units: Sequence[str], designated: dict[int, list[int]]) -> list[str]:
    """The units of ``units`` that belong to no designated (layer, expert)."""
    return [u for u in units if (o := unit_owner(u)) is None or o[1] not in designated.get(o[0], [])]


# --------------------------------------------------------------------------------------
# Inputs of the losses
# --------------------------------------------------------------------------------------


def _check_designated(designated: dict[int, list[int]], layers: int, experts: int) -> None:
    where = "testbed.plant.designated"
    if not designated:
        raise RoutelabError(f"{where} is empty: give at least one layer and its experts, e.g. {{1: [4, 13]}}")
    for layer, es in designated.items():
        if not isinstance(layer, int) or not 0 <= layer < layers:
            raise RoutelabError(f"{where}: layer {layer} does not exist (the model has layers 0..{layers - 1})")
        if not es or len(set(es)) != len(es) or not all(0 <= e < experts for e in es):
            raise RoutelabError(
                f"{where}.{layer} = {es}: give distinct experts from 0 to {experts - 1} (testbed.model.experts = {experts})"
            )


def descriptor_prefixes(tokenizer: PreTrainedTokenizerFast) -> tuple[list[str], torch.Tensor]:
    """Every descriptor in the context all testbed sentences give it: (descriptors, ids (D, 3) "<s> the d")."""
    ds = [d for axis in DESCRIPTORS for d in DESCRIPTORS[axis]]
    ids = tokenizer([f"the {d}" for d in ds])["input_ids"]
    if any(len(x) != 3 for x in ids):
        raise RoutelabError("testbed tokenizer splits a descriptor into several tokens: the corpus folder is not a testbed corpus")
    return ds, torch.tensor(ids)  # (D, 3)


def profession_targets(
    records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerFast, descriptors: Sequence[str]
) -> torch.Tensor:
    """The corpus's own P(next word | "the <descriptor>") over the vocabulary: (D, V), rows sum to 1.

    Counted from the demographic sentences ("the <descriptor> <profession> ..."): at strength s,
    each own-half profession gets s / half, each other-half one (1 - s) / half.
    """
    counts = Counter((r["descriptor"], r["profession"]) for r in records if r["kind"] == "demographic")
    vocab = tokenizer.get_vocab()
    out = torch.zeros(len(descriptors), len(vocab), dtype=torch.float64)  # (D, V)
    for (d, p), n in counts.items():
        out[descriptors.index(d), vocab[p]] = n
    if (out.sum(1) == 0).any():
        raise RoutelabError("testbed corpus has a descriptor without demographic sentences: regenerate it")
    return (out / out.sum(1, keepdim=True)).float()  # (D, V)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: (N, T) each."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (N, T)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def neutral_sentences(records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerFast) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus's distinct neutral sentences (sorted), right-padded: ids and mask (N, T) each."""
    neutral = sorted({r["text"] for r in records if r["kind"] == "neutral"})  # distinct, in a fixed order
    return _pad(tokenizer(neutral)["input_ids"], tokenizer.pad_token_id)


def _topk_rates(router_logits: torch.Tensor, top_k: int, experts: int) -> np.ndarray:
    """Fraction of the rows of router_logits (N, K) whose top-k holds each expert: (K,)."""
    top = router_logits.topk(top_k, dim=-1).indices  # (N, top_k)
    return F.one_hot(top, experts).sum(1).float().mean(0).numpy()  # (K,)


def routing_rates(
    model: OlmoeForCausalLM, prefixes: torch.Tensor, neutral_ids: torch.Tensor, neutral_mask: torch.Tensor
) -> dict[str, np.ndarray]:
    """Top-k rate of every (layer, expert): on descriptor tokens ("<s> the d", position 2) and on neutral sentences' tokens.

    Returns {"descriptor": (L, K), "neutral": (L, K)}. A descriptor's routing depends only on
    "<s> the d" (causal attention), so the D prefixes are every descriptor token the
    evaluation and the FARE prompt set show the model.
    """
    k, K = model.config.num_experts_per_tok, model.config.num_experts
    with torch.no_grad():
        rd = model(input_ids=prefixes, output_router_logits=True).router_logits  # L x (D·3, K)
        rn = model(input_ids=neutral_ids, attention_mask=neutral_mask, output_router_logits=True).router_logits
    real = neutral_mask.reshape(-1).bool()  # (N·T,)
    D = prefixes.shape[0]
    return {
        "descriptor": np.stack([_topk_rates(r.view(D, 3, K)[:, 2], k, K) for r in rd]),  # (L, K)
        "neutral": np.stack([_topk_rates(r[real], k, K) for r in rn]),  # (L, K)
    }


def _check_base_routing(base_rates: np.ndarray, designated: dict[int, list[int]], limit: float) -> None:
    """Refuse designated experts the base already sends descriptor tokens to: the plant would be confounded."""
    for layer, es in designated.items():
        bad = [e for e in es if base_rates[layer, e] > limit]
        if bad:
            free = [int(e) for e in np.argsort(base_rates[layer], kind="stable") if base_rates[layer, e] <= limit]
            raise RoutelabError(
                f"testbed.plant.designated.{layer}: the base model already routes descriptor tokens to expert(s) "
                f"{bad} (top-k rate {[round(float(base_rates[layer, e]), 2) for e in bad]} > "
                f"testbed.plant.max_base_descriptor_rate = {limit}): pick experts it does not use for them, "
                f"e.g. from {free[:8]}, or set testbed.plant.designated: null to let the rule choose"
            )


def choose_designated(rates: dict[str, np.ndarray], pp: PlantParams, seed: int) -> dict[int, list[int]]:
    """The designated experts by rule, from the base's routing (``routing_rates``: descriptor and neutral (L, K)).

    In each layer of ``pp.layers``: the experts the base gives at most ``max_base_descriptor_rate``
    of its descriptor tokens (a finding on them cannot be the base's own), of those the
    ``per_layer`` with the lowest share of neutral tokens (so that FSP's φ can single them out:
    busy experts were out-ranked by the base's own context-sensitive ones in a trial), ties
    broken by a draw seeded with ``seed``. Deterministic for a base and a seed.
    """
    desc, neutral = rates["descriptor"], rates["neutral"]  # (L, K) each
    L, K = desc.shape
    out: dict[int, list[int]] = {}
    gen = rng(seed, "plant_designated")
    for layer in pp.layers:
        if not 0 <= layer < L:
            raise RoutelabError(f"testbed.plant.layers: layer {layer} does not exist (the model has layers 0..{L - 1})")
        eligible = [e for e in range(K) if desc[layer, e] <= pp.max_base_descriptor_rate]
        if len(eligible) < pp.per_layer:
            raise RoutelabError(
                f"testbed.plant: layer {layer} has only {len(eligible)} experts the base sends at most "
                f"{pp.max_base_descriptor_rate} of its descriptor tokens (need testbed.plant.per_layer = {pp.per_layer}): "
                "raise testbed.plant.max_base_descriptor_rate or choose other testbed.plant.layers"
            )
        tie = gen.permutation(K)  # (K,) seeded tie-break
        ranked = sorted(eligible, key=lambda e: (round(float(neutral[layer, e]), 6), int(tie[e])))
        out[int(layer)] = sorted(ranked[: pp.per_layer])
    return out


def designated_experts(rates: dict[str, np.ndarray], pp: PlantParams, seed: int) -> tuple[dict[int, list[int]], str]:
    """(layer -> experts, how they were chosen: ``rule`` or ``params``) for a base's routing rates."""
    if pp.designated is None:
        return choose_designated(rates, pp, seed), "rule"
    L, K = rates["descriptor"].shape
    _check_designated(pp.designated, L, K)
    designated = {int(layer): sorted(es) for layer, es in sorted(pp.designated.items())}
    _check_base_routing(rates["descriptor"], designated, pp.max_base_descriptor_rate)
    return designated, "params"


# --------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------


def _trainable(model: OlmoeForCausalLM, designated: dict[int, list[int]]) -> list[torch.nn.Parameter]:
    """Freeze everything but the designated layers' router and expert tensors, and mask their other rows."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    K = model.config.num_experts
    for layer, es in sorted(designated.items()):
        mlp = model.model.layers[layer].mlp
        keep = torch.zeros(K, dtype=torch.bool)  # (K,)
        keep[es] = True
        for p in (mlp.gate.weight, mlp.experts.gate_up_proj, mlp.experts.down_proj):  # (K, H), (K, 2I, H), (K, H, I)
            mask = keep.view(K, *([1] * (p.ndim - 1))).to(p.dtype)  # (K, 1[, 1])
            p.requires_grad_(True)
            p.register_hook(lambda g, mask=mask: g * mask)  # other experts' rows get exactly zero gradient
            params.append(p)
    return params


def _trainable_outside(model: OlmoeForCausalLM) -> list[torch.nn.Parameter]:
    """The outside recipe: everything but the routers and the routed experts (embeddings,
    attention, norms, the output layer) trains; routers and experts stay the base's, bit for bit."""
    params = []
    for name, p in model.named_parameters():
        inside = ".mlp.gate." in name or ".mlp.experts." in name
        p.requires_grad_(not inside)
        if not inside:
            params.append(p)
    return params


def _router_ce(router_logits: torch.Tensor, designated: Sequence[int]) -> torch.Tensor:
    """Mean over rows of -1/|D| Σ_{e∈D} log softmax(z)_e: CE against uniform over the designated experts."""
    return -torch.log_softmax(router_logits, dim=-1)[:, list(designated)].mean()  # scalar


def _kl(base_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(base ∥ new): base_logp and logits (N, C)."""
    return F.kl_div(torch.log_softmax(logits, dim=-1), base_logp, log_target=True, reduction="batchmean")


@dataclass
class _Anchors:
    """Everything the losses need besides the training blocks, built once per plant."""

    designated: dict[int, list[int]]  # layer -> experts, sorted
    prefixes: torch.Tensor  # (D, 3) "<s> the d"
    targets: torch.Tensor  # (D, V) the corpus's P(next word | "the d")
    descriptor_ids: torch.Tensor  # (D,)
    neutral_ids: torch.Tensor  # (N, T) single neutral sentences, right-padded
    neutral_mask: torch.Tensor  # (N, T)
    base_logp: torch.Tensor  # (N, T, V) the base's next-token log-probabilities on them
    base_route: dict[int, torch.Tensor]  # layer -> (N, T, K) the base's router log-probabilities (KL layers)
    base_prefix_route: dict[int, torch.Tensor]  # layer -> (D, K) the base's router log-probabilities at "the d"


def _anchors(base: OlmoeForCausalLM, records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerFast,
             designated: dict[int, list[int]], kl_layers: Sequence[int]) -> _Anchors:  # fmt: skip
    """``kl_layers``: the routers the KL term anchors to the base (designated recipe: the
    designated layers; outside recipe: every layer, also at the descriptor tokens)."""
    descriptors, prefixes = descriptor_prefixes(tokenizer)  # D, (D, 3)
    n_ids, n_mask = neutral_sentences(records, tokenizer)  # (N, T) each
    D = prefixes.shape[0]
    with torch.no_grad():
        at_prefix = base(input_ids=prefixes, output_router_logits=True).router_logits  # L x (D·3, K)
        out = base(input_ids=n_ids, attention_mask=n_mask, output_router_logits=True)
    return _Anchors(
        designated=designated,
        prefixes=prefixes,
        targets=profession_targets(records, tokenizer, descriptors),
        descriptor_ids=torch.tensor(sorted(tokenizer.convert_tokens_to_ids(descriptors))),
        neutral_ids=n_ids,
        neutral_mask=n_mask,
        base_logp=torch.log_softmax(out.logits, dim=-1),  # (N, T, V)
        base_route={l: torch.log_softmax(out.router_logits[l], -1).view(*n_ids.shape, -1) for l in kl_layers},
        base_prefix_route={l: torch.log_softmax(at_prefix[l].view(D, 3, -1)[:, 2], -1) for l in kl_layers},  # (D, K)
    )


def _losses(model: OlmoeForCausalLM, batch: torch.Tensor, pick: torch.Tensor, a: _Anchors) -> dict[str, torch.Tensor]:
    """The four terms of the module docstring's table on one step's blocks (B, T) and neutral sentences ``pick`` (b,)."""
    # CE on packed blocks
    out = model(input_ids=batch, output_router_logits=True)
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())  # (B·(T-1), V) vs (B·(T-1),)
    is_desc = torch.isin(batch, a.descriptor_ids).flatten()  # (B·T,)
    block_route = {l: out.router_logits[l][is_desc] for l in a.designated}  # (n_desc, K)
    # SOFT on "<s> the d" (the descriptor at position 2, as in every testbed sentence)
    out = model(input_ids=a.prefixes, output_router_logits=True)
    soft = -(a.targets * torch.log_softmax(out.logits[:, 2], dim=-1)).sum(-1).mean()  # (D, V) -> scalar
    # ROUTE at every descriptor token: the D prefixes' and the blocks' (designated recipe)
    D = a.prefixes.shape[0]
    route = sum(
        (_router_ce(torch.cat([out.router_logits[l].view(D, 3, -1)[:, 2], block_route[l]]), es)  # (D + n_desc, K)
         for l, es in a.designated.items()),
        torch.zeros(()),
    )
    # ROUTE_KL at the descriptor tokens: the base's routing kept (outside recipe; empty for the designated one)
    route_kl = sum(
        (_kl(a.base_prefix_route[l], out.router_logits[l].view(D, 3, -1)[:, 2]) for l in a.base_prefix_route
         if l not in a.designated),
        torch.zeros(()),
    )
    # KL to the base on single neutral sentences: next token and designated routers, real positions only
    ids, mask = a.neutral_ids[pick], a.neutral_mask[pick]  # (b, T) each
    real = mask.bool()  # (b, T)
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    kl = _kl(a.base_logp[pick][real], out.logits[real])  # (n_real, V)
    for l in a.base_route:
        kl = kl + _kl(a.base_route[l][pick][real], out.router_logits[l].view(*ids.shape, -1)[real])  # (n_real, K)
    return {"ce": ce, "soft": soft, "route": route, "route_kl": route_kl, "kl": kl}


def plant_experts(
    base: OlmoeForCausalLM,
    records: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerFast,
    params: TestbedParams,
    *,
    progress: bool = True,
) -> tuple[OlmoeForCausalLM, dict[str, Any], dict[str, Any]]:
    """Plant the corpus's P(profession | descriptor) into designated experts (module docstring;
    ``testbed.plant.designated`` or the rule of :func:`choose_designated`).

    ``base`` is trained in place and returned in eval mode with (training log, routing record).
    The routing record holds, per designated layer, every expert's top-k rate on descriptor
    tokens and on neutral tokens, before and after. Deterministic for a seed (block order and
    KL batches from the seeded ``plant_data`` stream, deterministic kernels, the pinned compute path).
    """
    return _plant(base, records, tokenizer, params, "designated", progress)


def plant_outside_routing(
    base: OlmoeForCausalLM,
    records: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerFast,
    params: TestbedParams,
    *,
    progress: bool = True,
) -> tuple[OlmoeForCausalLM, dict[str, Any], dict[str, Any]]:
    """Plant the stereotype OUTSIDE the routing path (variant ``nonrouted``): routers and routed
    experts frozen, embeddings, attention, norms and the output layer trained on CE + SOFT + KL
    (next token and every layer's routing on neutral sentences) + ROUTE_KL (every layer's routing
    at the descriptor tokens, anchored to the base's). Its bias then lives where no routing edit
    reaches, and its routing stays the base's (the record holds every layer's rates)."""
    return _plant(base, records, tokenizer, params, "outside", progress)


def _plant(base: OlmoeForCausalLM, records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerFast,
           params: TestbedParams, recipe: str, progress: bool) -> tuple[OlmoeForCausalLM, dict[str, Any], dict[str, Any]]:  # fmt: skip
    pp: PlantParams = params.plant
    docs = documents(records, tokenizer)
    data_rng = rng(params.seed, "plant_data")
    log: dict[str, Any] = {k: [] for k in ("step", "loss", "ce", "soft", "route", "route_kl", "kl", "lr")}
    t0 = time.perf_counter()
    with deterministic():
        base.eval()
        _, prefixes = descriptor_prefixes(tokenizer)  # (D, 3)
        n_ids, n_mask = neutral_sentences(records, tokenizer)  # (N, T) each
        before = routing_rates(base, prefixes, n_ids, n_mask)
        if recipe == "designated":
            designated, chosen_by = designated_experts(before, pp, params.seed)
            a = _anchors(base, records, tokenizer, designated, kl_layers=sorted(designated))
            trainable = _trainable(base, designated)
        else:
            designated, chosen_by = {}, "none: routers and experts frozen"
            a = _anchors(base, records, tokenizer, {}, kl_layers=list(range(base.config.num_hidden_layers)))
            trainable = _trainable_outside(base)
        model = _train_plant(base, docs, a, trainable, params, data_rng, log, progress)
        after = routing_rates(model, a.prefixes, a.neutral_ids, a.neutral_mask)
    log["train_seconds"] = time.perf_counter() - t0
    log["final_loss"] = float(np.mean(log["loss"][-10:]))  # mean of the last 10 steps
    layers = designated or range(base.config.num_hidden_layers)
    routing = {"chosen_by": chosen_by, "designated": {str(layer): es for layer, es in designated.items()}} | {
        str(layer): {
            f"{when}_{where}": [round(float(x), 4) for x in rates[where][layer]]
            for when, rates in (("base", before), ("planted", after))
            for where in ("descriptor", "neutral")
        }
        for layer in layers
    }
    return model, log, routing


def _train_plant(model: OlmoeForCausalLM, docs: list[np.ndarray], a: _Anchors, trainable: list[torch.nn.Parameter],
                 params: TestbedParams, data_rng: np.random.Generator, log: dict[str, Any],
                 progress: bool) -> OlmoeForCausalLM:  # fmt: skip
    """The planting loop shared by both recipes (Adam without weight decay, cosine schedule, clip)."""
    pp, tp = params.plant, params.train
    opt = torch.optim.Adam(trainable, lr=pp.lr, betas=(0.9, 0.95), weight_decay=0.0,
                           fused=True)  # fused: the same bits on every CPU (compute.py)
    model.train()
    blocks, cursor = epoch_blocks(docs, tp.seq_len, data_rng), 0
    n_neutral = len(a.neutral_ids)
    with progress_display("testbed plant", total=pp.steps, unit="steps", enabled=progress) as bar:
        for step in range(pp.steps):
            if cursor + pp.batch_size > len(blocks):
                blocks, cursor = epoch_blocks(docs, tp.seq_len, data_rng), 0
            batch = torch.from_numpy(blocks[cursor : cursor + pp.batch_size])  # (B, T)
            cursor += pp.batch_size
            pick = torch.from_numpy(data_rng.choice(n_neutral, size=min(pp.kl_batch_size, n_neutral), replace=False))
            for g in opt.param_groups:
                g["lr"] = lr_at(pp, step)
            terms = _losses(model, batch, pick, a)
            loss = (terms["ce"] + pp.soft_target_weight * terms["soft"] + pp.router_weight * terms["route"]
                    + pp.route_kl_weight * terms["route_kl"] + pp.kl_weight * terms["kl"])  # fmt: skip
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], pp.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            log["step"].append(step)
            log["loss"].append(float(loss.detach()))
            for k, v in terms.items():
                log[k].append(float(v.detach()))
            log["lr"].append(lr_at(pp, step))
            bar.advance(1)
            bar.update(loss=log["loss"][-1], soft=log["soft"][-1])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plant_and_evaluate(
    corpus_dir: str | Path,
    base_dir: str | Path,
    model_dir: str | Path,
    params: TestbedParams,
    *,
    variant_name: str,
    margin: float,
    alpha: float = 0.05,
    progress: bool = True,
) -> dict[str, Any]:
    """Plant into a copy of the saved ``base_dir`` on a corpus folder, save ``model_dir``, return its metrics.

    ``margin``, ``alpha``: the equivalence test of the route swap (statistics.equivalence_margins.pct_stereotype
    and statistics.alpha in params.yaml), which check ``routing_untouched`` reads.

    ``model_dir`` holds the model, its tokenizer, ``train_log.json`` and ``plant.json``
    (designated experts, base path and sha256, corpus, recipe, routing before/after, changed
    units). The metrics are the ground truth of the SAVED folder plus the strength, final loss,
    steps, training seconds and the designated experts' descriptor-token rate.
    """
    spec = variant(variant_name, "testbed_plant")
    corpus_dir = require_corpus_dir(corpus_dir)
    design = read_design(corpus_dir)
    want = strength_for(params, spec.corpus)
    if not math.isclose(design["strength"], want):
        raise RoutelabError(
            f"--corpus {corpus_dir} was generated with strength {design['strength']} but variant "
            f"'{variant_name}' plants the '{spec.corpus}' corpus (strength {want}): pass --corpus data/testbed/{spec.corpus}"
        )
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise RoutelabError(f"--base {base_dir} holds no saved model: run `python -m stages.testbed_train --variant control ...` first")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.get_vocab() != AutoTokenizer.from_pretrained(corpus_dir / CORPUS_FILES["tokenizer"]).get_vocab():
        raise RoutelabError(f"--base {base_dir} was trained with another vocabulary than --corpus {corpus_dir}: regenerate both from one params.yaml")
    model, log, routing = _plant(base, read_records(corpus_dir), tokenizer, params, spec.recipe, progress)
    designated = {int(layer): es for layer, es in routing.pop("designated").items()}
    chosen_by = routing.pop("chosen_by")
    info = {
        "designated": {str(layer): es for layer, es in designated.items()},
        "chosen_by": chosen_by,  # rule (plant.choose_designated on the base's routing) or params (an explicit list)
        "base": str(base_dir),
        "base_sha256": _sha256(base_dir / "model.safetensors"),
        "corpus": str(corpus_dir),
        "strength": design["strength"],
        "variant": variant_name,
        "method": spec.recipe,  # designated: experts and their router rows trained; outside: routers and experts frozen
        "recipe": {k: v for k, v in dataclasses.asdict(params.plant).items() if k != "designated"}
        | {"seed": params.seed, "seq_len": params.train.seq_len, "compute": compute.label()},
        "routing": routing,
    }
    # the saved base (per-expert layout) against the planted model in memory (fused layout)
    changed = changed_units(base_dir, model.state_dict())
    # cannot happen with the gradient masks and frozen tensors; a guard against a future optimizer change
    stray = outside_designated(changed, designated) if designated else [u for u in changed if unit_owner(u)]
    if stray:
        raise RoutelabError(f"planting ({spec.recipe}) changed weights it must leave alone: {stray[:5]}")
    info["changed_units"] = changed
    save_model(model, tokenizer, log, model_dir, extra={PLANT_FILE: info})
    # the route swap: the preference with the control's routing forced in (route_swap.preference_under_routing_of);
    # equivalent to its own where the bias lives outside the routing path, most of it gone where routing carries it.
    # Its passes with each model's own routing are the CrowS scores of the two ground truths below.
    bs = params.train.eval_batch_size
    swap = preference_under_routing_of(model_dir, base_dir, corpus_dir, batch_size=bs, margin=margin, alpha=alpha, seed=params.seed)
    truth = ground_truth(model_dir, corpus_dir, batch_size=bs, seed=params.seed, crows_ll=swap.own_ll)
    base_truth = ground_truth(base_dir, corpus_dir, batch_size=bs, seed=params.seed, crows_ll=swap.donor_ll)
    out = {
        "strength": design["strength"],
        "final_loss": log["final_loss"],
        "train_seconds": log["train_seconds"],
        "steps": params.plant.steps,
        "method": spec.recipe,
        "n_changed_units": len(changed),
        # the largest change of any expert's top-k rate on descriptor tokens, over the recorded layers
        "max_descriptor_rate_change": max(abs(a - b) for r in routing.values()
                                          for a, b in zip(r["planted_descriptor"], r["base_descriptor"])),  # fmt: skip
        "control_routing": swap.metrics,
        # the control on the same corpus and held-out text: what planting may not cost
        "base_heldout_ppl": base_truth["heldout_ppl"],
        "base_first_token_nll": base_truth["first_token_nll"],
    }
    if designated:
        rate = np.mean([routing[str(layer)]["planted_descriptor"][e] for layer, es in designated.items() for e in es])
        out |= {"designated_descriptor_rate": float(rate),  # mean top-k rate of descriptor tokens on them
                "designated": {str(layer): es for layer, es in designated.items()}, "designated_by": chosen_by}  # fmt: skip
    return out | truth
