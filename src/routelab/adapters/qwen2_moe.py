"""Qwen2-MoE / Qwen1.5-MoE: as OLMoE, plus a sigmoid-gated shared expert (never edited).

Some layers may be dense (mlp_only_layers, decoder_sparse_step): layers are mapped by name.
"""

from routelab.adapters.base import RouterAdapter, softmax_topk

ADAPTER = RouterAdapter(
    family="Qwen2-MoE",
    architectures=("Qwen2MoeForCausalLM",),
    model_types=("qwen2_moe",),
    router_class="Qwen2MoeTopKRouter",
    num_experts_key="num_experts",
    top_k_key="num_experts_per_tok",
    rule=softmax_topk,
    shared_expert_attr="shared_expert",
    notes="Qwen1.5-MoE-A2.7B loads as this family",
)
