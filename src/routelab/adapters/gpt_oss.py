"""GPT-OSS: top-k on the logits (the router has a real bias), then softmax over the k chosen."""

import torch

from routelab.adapters.base import RouterAdapter


def gpt_oss_rule(router, logits):
    top_value, index = torch.topk(logits, router.top_k, dim=-1)  # (N, k)
    weights = torch.softmax(top_value, dim=1, dtype=top_value.dtype)
    return weights, index


ADAPTER = RouterAdapter(
    family="GPT-OSS",
    architectures=("GptOssForCausalLM",),
    model_types=("gpt_oss",),
    router_class="GptOssTopKRouter",
    num_experts_key="num_local_experts",
    top_k_key="num_experts_per_tok",
    routes_in_model_dtype=True,
    layer_fork=False,  # its sliding-window mask is built per batch row: rows cannot be added mid-forward
    rule=gpt_oss_rule,
    notes="router bias is part of the logits",
)
