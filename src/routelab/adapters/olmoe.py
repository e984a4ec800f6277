"""OLMoE (allenai/OLMoE-1B-7B-0924): softmax (fp32) → top-k; renormalise iff norm_topk_prob."""

from routelab.adapters.base import RouterAdapter, softmax_topk

ADAPTER = RouterAdapter(
    family="OLMoE",
    architectures=("OlmoeForCausalLM",),
    model_types=("olmoe",),
    router_class="OlmoeTopKRouter",
    num_experts_key="num_experts",
    top_k_key="num_experts_per_tok",
    rule=softmax_topk,
    notes="norm_topk_prob=False for the 0924 checkpoint",
)
