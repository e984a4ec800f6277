"""DeepSeek-V2: fp32 softmax; greedy or group_limited_greedy top-k; × routed_scaling_factor."""

import torch
import torch.nn.functional as F

from routelab.adapters.base import RouterAdapter


def deepseek_v2_rule(router, logits):
    scores = F.softmax(logits.float(), dim=-1)  # (N, K)
    if router.topk_method == "group_limited_greedy":
        n, per_group = router.num_group, router.num_experts // router.num_group
        group_scores = scores.view(-1, n, per_group).max(dim=-1).values  # (N, G)
        group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, n, per_group).reshape(-1, router.num_experts)
        scores = scores.masked_fill(~score_mask.bool(), 0.0)
        choice = logits.float().masked_fill(~score_mask.bool(), float("-inf"))
    elif router.topk_method == "greedy":
        choice = logits.float()
    else:
        raise ValueError(f"DeepSeek-V2 topk_method {router.topk_method!r} is not supported")
    # top-k on the logits (dropped groups at −inf): the router's choice without underflow ties
    _, index = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)
    weights = scores.gather(-1, index) * router.routed_scaling_factor  # (N, k)
    return weights, index


ADAPTER = RouterAdapter(
    family="DeepSeek-V2",
    architectures=("DeepseekV2ForCausalLM",),
    model_types=("deepseek_v2",),
    router_class="DeepseekV2TopkRouter",
    num_experts_key="n_routed_experts",
    top_k_key="num_experts_per_tok",
    rule=deepseek_v2_rule,
    shared_expert_attr="shared_experts",
    notes="first_k_dense_replace layers are dense; index order unsorted",
)
