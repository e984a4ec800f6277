"""DeepSeekMoE-16B (deepseek-ai/deepseek-moe-16b-base, remote code ``DeepseekForCausalLM``).

Its gate ``MoEGate`` holds a raw weight (64, H) and returns ``(topk_idx, topk_weight,
aux_loss)``: no logits. The adapter recomputes logits = F.linear(h, gate.weight) from the
hook's input and re-runs the gate's rule: softmax → top-k (unsorted) → renormalise iff
top_k > 1 and norm_topk_prob (+1e-20, as the remote code). Two shared experts sit beside the
routed ones and are never edited.

Loading on transformers 5.x: the remote code imports ``is_torch_fx_available`` (removed in
5.x) and uses legacy cache methods. ``install_compat()`` puts the import back (it always
returned False for the model's purpose) and routelab loads the model with ``use_cache=False``
(the pipeline scores whole sequences and never needs the KV cache for this family). If the
remote code breaks further, pin ``transformers==4.57.6`` in a separate environment for this
model: the adapter also works there, because the remote gate is identical.
"""

import torch
import torch.nn.functional as F
import transformers.utils as tu
import transformers.utils.import_utils as iu

from routelab.adapters.base import RouterAdapter


def deepseek_moe_rule(gate, logits):
    scores = F.softmax(logits.float(), dim=-1)  # (N, K)
    # top-k on the logits: same choice as on the scores, without underflow ties (base.softmax_topk)
    _, index = torch.topk(logits.float(), k=gate.top_k, dim=-1, sorted=False)  # (N, k)
    weights = scores.gather(-1, index)
    if gate.top_k > 1 and gate.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights, index


def install_compat() -> None:
    """Make the remote code importable on transformers 5.x (see the module docstring)."""
    for mod in (iu, tu):
        if not hasattr(mod, "is_torch_fx_available"):
            mod.is_torch_fx_available = lambda: False


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
    notes="remote code; logits recomputed; load with trust_remote_code=True, use_cache=False",
)
