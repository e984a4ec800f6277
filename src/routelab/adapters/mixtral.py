"""Mixtral: softmax → top-k → always renormalise; input jitter only in training (eval() off)."""

from functools import partial

from routelab.adapters.base import RouterAdapter, softmax_topk

ADAPTER = RouterAdapter(
    family="Mixtral",
    architectures=("MixtralForCausalLM",),
    model_types=("mixtral",),
    router_class="MixtralTopKRouter",
    num_experts_key="num_local_experts",
    top_k_key="num_experts_per_tok",
    rule=partial(softmax_topk, renormalise=True),
    notes="router jitter only in training",
)
