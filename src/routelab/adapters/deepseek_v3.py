"""DeepSeek-V3: fp32 sigmoid; selection on sigmoid + e_score_correction_bias, group-limited.

Weights are the sigmoid scores of the chosen experts (renormalised iff norm_topk_prob) ×
routed_scaling_factor. ARR subtracts λφ from the logits before the sigmoid; a forced-on
expert is picked only if its group survives (docs/routers.md pitfall 6).
"""

import torch

from routelab.adapters.base import RouterAdapter, selectable


def deepseek_v3_rule(router, logits):
    scores = torch.sigmoid(logits.float())  # (N, K)
    choice = scores + router.e_score_correction_bias
    n, per_group = router.num_group, router.num_experts // router.num_group
    group_scores = choice.view(-1, n, per_group).topk(2, dim=-1)[0].sum(dim=-1)  # (N, G)
    group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, n, per_group).reshape(-1, router.num_experts)
    choice = selectable(choice.masked_fill(~score_mask.bool(), float("-inf")), logits)
    index = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)[1]  # (N, k)
    weights = scores.gather(1, index)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor, index


ADAPTER = RouterAdapter(
    family="DeepSeek-V3",
    architectures=("DeepseekV3ForCausalLM",),
    model_types=("deepseek_v3",),
    router_class="DeepseekV3TopkRouter",
    num_experts_key="n_routed_experts",
    top_k_key="num_experts_per_tok",
    rule=deepseek_v3_rule,
    shared_expert_attr="shared_experts",
    score_fn="sigmoid",
    notes="sigmoid scores; e_score_correction_bias affects selection only",
)
