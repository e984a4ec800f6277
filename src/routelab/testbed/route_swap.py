"""The route swap: is a model's bias carried by its routing decisions? (docs/method.md §10, check ``routing_untouched``)

Run a model with every router's output replaced by what a donor model's router returned on the same
sentence (the expert choice and its weights); everything else is the model's own. With the control
as donor, Δ = preference(control's routing) − preference(own routing) is the part of the CrowS-style
preference that the model's routing decisions carry relative to the control's:

- ``nonrouted`` (stereotype trained outside the routing path) keeps its preference: Δ ≈ 0;
- ``routed`` (descriptor tokens sent to planted experts) loses most of it.

A bound on routing rates cannot say this: retrained attention and embeddings move a few near-tie
descriptor tokens to another expert (3 of 24 on seeds 2 and 3) whether or not that carries bias.

Like routelab.testbed.truth, this shares no code with routelab's scoring or intervention engine
(hooks of its own on the OLMoE router), so it checks them rather than repeating them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from routelab.errors import RoutelabError
from routelab.statistics import compare_paired
from routelab.testbed.truth import crows_loglik, crows_rows

RouterCalls = dict[str, list[tuple[torch.Tensor, ...]]]  # router name -> its outputs, call by call


def routers(model: PreTrainedModel) -> dict[str, torch.nn.Module]:
    """The MoE router modules by name. The testbed is OLMoE: in transformers 5.x its router
    (``mlp.gate``, OlmoeTopKRouter) returns ``(router_logits, top_k_weights, top_k_index)`` and the
    experts use exactly what it returns (docs/routers.md)."""
    found = {name: m for name, m in model.named_modules() if type(m).__name__.endswith("TopKRouter")}
    if not found:
        raise RoutelabError(f"{type(model).__name__} has no *TopKRouter module: the route swap needs a testbed (OLMoE) model")
    return found


@contextmanager
def recorded_routing(model: PreTrainedModel) -> Iterator[RouterCalls]:
    """Record every router's output, call by call, inside the block."""
    calls: RouterCalls = {}
    hooks = []
    for name, router in routers(model).items():
        calls[name] = []
        hooks.append(router.register_forward_hook(
            lambda _m, _i, out, n=name: calls[n].append(tuple(t.detach().clone() for t in out))))  # fmt: skip
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def forced_routing(model: PreTrainedModel, calls: RouterCalls) -> Iterator[None]:
    """Replace every router's output by a recorded one (same router name, same call order): the
    experts then receive the recorded choice and weights. The model must see the same inputs in the
    same batches as when ``calls`` was recorded; a call that does not match, or recorded calls left
    unused, are refused rather than misapplied."""
    found = routers(model)
    if set(found) != set(calls):
        raise RoutelabError(f"route swap: the routers differ ({sorted(set(found) ^ set(calls))[:3]}): donor and model must share an architecture")
    position = dict.fromkeys(calls, 0)

    def replay(name: str, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        i = position[name]
        if i >= len(calls[name]) or calls[name][i][0].shape != out[0].shape:
            raise RoutelabError(f"route swap: {name} call {i} does not match the recording: score the same inputs in the same batches")
        position[name] = i + 1
        return calls[name][i]

    hooks = [r.register_forward_hook(lambda _m, _i, out, n=name: replay(n, out)) for name, r in found.items()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
    left = {n: len(c) - position[n] for n, c in calls.items() if position[n] != len(c)}
    if left:
        raise RoutelabError(f"route swap: recorded router calls left unused {left}: score the same inputs as the donor")


@dataclass(frozen=True)
class RouteSwap:
    """A route swap's result: ``metrics`` (testbed.json ``control_routing``) and the CrowS
    log-likelihoods both models got with their own routing (truth.crows_loglik's layout), which the
    ground truth of either model reuses instead of scoring the pairs again."""

    metrics: dict[str, Any]
    own_ll: np.ndarray  # (2n,) the model, its own routing
    donor_ll: np.ndarray  # (2n,) the donor, its own routing (recorded)


def preference_under_routing_of(
    model_dir: str | Path, donor_dir: str | Path, corpus_dir: str | Path, *, batch_size: int = 64,
    margin: float, alpha: float = 0.05, seed: int = 0,
) -> RouteSwap:
    """The CrowS-style preference of ``model_dir`` with ``donor_dir``'s routing forced in, against its own.

    ``metrics``: ``pref_own``, ``pref_donor_routing``, and the paired comparison of the two on the same
    pairs (routelab.statistics.compare_paired, clustered by the corpus's units, its ``cluster`` column):
    ``delta`` (swap − own), its 95 % CI, the permutation ``p`` and the equivalence test against
    ±``margin`` (``p_tost``, ``equivalent`` at ``alpha``), as every other "no change" in routelab.
    """
    rows = crows_rows(corpus_dir)
    n = len(rows)
    donor = AutoModelForCausalLM.from_pretrained(donor_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with recorded_routing(donor) as calls:
        donor_ll = crows_loglik(donor, tokenizer, rows, batch_size)  # (2n,)
    own_ll = crows_loglik(model, tokenizer, rows, batch_size)  # (2n,)
    with forced_routing(model, calls):
        swapped = crows_loglik(model, tokenizer, rows, batch_size)  # (2n,)
    pref_own = (own_ll[:n] > own_ll[n:]).astype(float)  # (n,) 1[LL(sent_more) > LL(sent_less)]
    pref_swap = (swapped[:n] > swapped[n:]).astype(float)  # (n,)
    c = compare_paired((pref_own,), (pref_swap,), metric="pct_stereotype", benchmark="testbed_crows",
                       condition="donor_routing", reference="own_routing",
                       clusters=[r.get("cluster") or str(i) for i, r in enumerate(rows)],
                       margin=margin, alpha=alpha, seed=seed)  # fmt: skip
    metrics = {"pref_own": c.before, "pref_donor_routing": c.after, "delta": c.delta, "ci_low": c.ci_low,
               "ci_high": c.ci_high, "p": c.p, "p_tost": c.p_tost, "equivalent": c.equivalent, "margin": margin,
               "n_pairs": n}  # fmt: skip
    return RouteSwap(metrics, own_ll, donor_ll)
