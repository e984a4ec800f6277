"""DeepSeekMoE-16B (deepseek-ai/deepseek-moe-16b-base, remote code ``DeepseekForCausalLM``).

Its gate ``MoEGate`` holds a raw weight (64, H) and returns ``(topk_idx, topk_weight,
aux_loss)``: no logits. The adapter recomputes logits = F.linear(h, gate.weight) from the
hook's input and re-runs the gate's rule: softmax → top-k (unsorted) → renormalise iff
top_k > 1 and norm_topk_prob (+1e-20, as the remote code). Two shared experts sit beside the
routed ones and are never edited.

Loading on transformers 5.x: the remote code was written for 4.x. routelab.remote_code makes it
load and compute correctly (removed import put back, ``rope_scaling`` as config.json wrote it,
RoPE buffers recomputed). Its legacy KV-cache calls are gone in 5.x, so ``kv_cache=False``:
load_model sets ``config.use_cache = False`` and routelab.generation decodes by recomputing
the whole prefix at every step (same tokens, O(T²) tokens of forward work instead of O(T)).
"""

import torch
import torch.nn.functional as F

from routelab.adapters.base import RouterAdapter


def deepseek_moe_rule(gate, logits):
    scores = F.softmax(logits.float(), dim=-1)  # (N, K)
    # top-k on the logits: same choice as on the scores, without underflow ties (base.softmax_topk)
    _, index = torch.topk(logits.float(), k=gate.top_k, dim=-1, sorted=False)  # (N, k)
    weights = scores.gather(-1, index)
    if gate.top_k > 1 and gate.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights, index


ADAPTER = RouterAdapter(
    family="DeepSeekMoE",
    architectures=("DeepseekForCausalLM",),
    model_types=("deepseek",),
    router_class="MoEGate",
    num_experts_key="n_routed_experts",
    top_k_key="num_experts_per_tok",
    rule=deepseek_moe_rule,
    shared_expert_attr="shared_experts",
    router_returns_logits=False,
    router_input_3d=True,
    routes_in_model_dtype=True,
    kv_cache=False,  # the remote code calls the legacy cache API, removed in transformers 5.x
    notes="remote code (trust_remote_code=True); logits recomputed; decoded without KV cache",
)
