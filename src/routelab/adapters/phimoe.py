"""Phi-3.5-MoE: sparsemixer (two sequential top-1 choices with a jitter-eps mask).

We call transformers' own ``sparsemixer`` in eval mode (training=False: no Gumbel sampling),
so the rule is the library's, not a copy.
"""

from transformers.models.phimoe.modeling_phimoe import sparsemixer

from routelab.adapters.base import RouterAdapter


def phimoe_rule(router, logits):
    weights, index = sparsemixer(
        logits.float(), jitter_eps=router.router_jitter_noise, training=False, top_k=router.top_k
    )
    return weights, index


ADAPTER = RouterAdapter(
    family="Phi-3.5-MoE",
    architectures=("PhimoeForCausalLM",),
    model_types=("phimoe",),
    router_class="PhimoeTopKRouter",
    num_experts_key="num_local_experts",
    top_k_key="num_experts_per_tok",
    routes_in_model_dtype=True,
    rule=phimoe_rule,
    notes="sparsemixer supports top_k=2 only",
)
