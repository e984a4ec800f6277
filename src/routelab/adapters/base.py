"""The router-adapter interface and the routing rules the families share.

An adapter is mostly data (which module is the router, which config keys hold K and k,
whether the block has shared experts) plus one function: the family's routing rule, which
turns (possibly edited) router logits into (weights, index) exactly as the router's own
forward does. routelab.routing re-runs that rule on edited logits inside a forward hook,
so the experts only ever see the steered choice (docs/routers.md, "Interception").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

# rule(router, logits (N, K) float32) -> (weights (N, k), index (N, k))
RoutingRule = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def selectable(scores: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Scores with masked experts (logit −inf) pushed below every real score.

    Why: a −inf logit gives probability exactly 0, which can tie with underflowed or
    group-masked scores; top-k then breaks ties arbitrarily and may "select" a masked expert
    (docs/routers.md pitfall 2). Unedited logits are never −inf, so the unedited rule is unchanged.
    """
    return scores.masked_fill(torch.isneginf(logits), float("-inf"))


def softmax_topk(router: nn.Module, logits: torch.Tensor, *, renormalise: bool | None = None):
    """softmax (fp32) → top-k → optional renormalisation (OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral).

    Top-k runs on the fp32 logits, not the probabilities: softmax is monotone, so the choice is
    the router's, except where strongly penalised experts underflow to probability exactly 0
    and tie — there the router picks arbitrarily among them (docs/routers.md pitfall 2), we do not.
    """
    z = logits.float()
    probs = F.softmax(z, dim=-1)  # (N, K)
    k = router.top_k
    _, index = torch.topk(z, k, dim=-1)  # (N, k), −inf (masked) last
    weights = probs.gather(-1, index)  # (N, k)
    norm = getattr(router, "norm_topk_prob", False) if renormalise is None else renormalise
    if norm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, index


@dataclass(frozen=True)
class RouterAdapter:
    """How to find, read and re-run one family's router.

    Attributes are data; ``rule`` is the only code that differs between families.
    """

    family: str  # display name
    architectures: tuple[str, ...]  # config.architectures entries handled by this adapter
    model_types: tuple[str, ...]  # config.model_type values handled by this adapter
    router_class: str  # class name of the router module (matched by name: remote code too)
    num_experts_key: str  # config attribute holding K (routed experts per layer)
    top_k_key: str  # config attribute holding k
    rule: RoutingRule  # routing after the logits, as the router's own forward does it
    shared_expert_attr: str | None = None  # attribute of the MoE block holding shared experts
    score_fn: str = "softmax"  # probabilities from logits: softmax | sigmoid
    router_returns_logits: bool = True  # False: remote DeepSeekMoE gate returns (idx, w, aux)
    router_input_3d: bool = False  # the router's forward expects (B, S, H) rather than (N, H)
    routes_in_model_dtype: bool = False  # the router scores in bf16/fp16 itself (ties at dtype resolution)
    kv_cache: bool = True  # decoding may use the model's KV cache (False: recompute the prefix each step)
    layer_fork: bool = True  # conditions may share the layers before their first edit (routing.LayerFork)
    notes: str = ""

    # --- reading the router's output -------------------------------------------------------
    def logits(self, router: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        """Router logits (N, K) for this call; recomputed from the input where not returned."""
        if self.router_returns_logits:
            return output[0].reshape(-1, output[0].shape[-1])
        hidden = inputs[0]
        return F.linear(hidden.reshape(-1, hidden.shape[-1]), router.weight)  # (N, K)

    def selection(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, index) as the router returned them, each (N, k)."""
        if self.router_returns_logits:
            w, i = output[1], output[2]
        else:
            i, w = output[0], output[1]
        return w.reshape(-1, w.shape[-1]), i.reshape(-1, i.shape[-1])

    def repack(self, output: Any, logits: torch.Tensor, weights: torch.Tensor, index: torch.Tensor):
        """Rebuild the router's output tuple around edited logits and a new selection."""
        old_w, old_i = self.selection(output)
        weights = weights.to(old_w.dtype)
        index = index.to(old_i.dtype)
        if self.router_returns_logits:
            return (logits.to(output[0].dtype).reshape(output[0].shape), weights, index)
        return (index, weights, *tuple(output[2:]))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Routing probabilities G(h) from logits (docs/method.md notation), float32."""
        if self.score_fn == "sigmoid":
            return torch.sigmoid(logits.float())
        return F.softmax(logits.float(), dim=-1)

    def sizes(self, config: Any) -> tuple[int, int]:
        """(K, k) from the model config."""
        return int(getattr(config, self.num_experts_key)), int(getattr(config, self.top_k_key))
