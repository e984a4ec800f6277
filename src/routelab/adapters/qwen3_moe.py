"""Qwen3-MoE: as OLMoE; Qwen3-30B-A3B has norm_topk_prob=True."""

from routelab.adapters.base import RouterAdapter, softmax_topk

ADAPTER = RouterAdapter(
    family="Qwen3-MoE",
    architectures=("Qwen3MoeForCausalLM",),
    model_types=("qwen3_moe",),
    router_class="Qwen3MoeTopKRouter",
    num_experts_key="num_experts",
    top_k_key="num_experts_per_tok",
    rule=softmax_topk,
)
