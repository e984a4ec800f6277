"""One adapter per MoE family, registered in one table.

| family        | router (attr : class)           | routing rule after the logits                       | quirks                                   |
|---------------|---------------------------------|-----------------------------------------------------|------------------------------------------|
| OLMoE         | gate : OlmoeTopKRouter          | softmax fp32 → top-k; renorm iff norm_topk_prob      | 0924: no renorm                          |
| Mixtral       | gate : MixtralTopKRouter        | softmax → top-k → renorm                            | jitter in training only                  |
| Qwen2-MoE     | gate : Qwen2MoeTopKRouter       | as OLMoE                                            | shared_expert × sigmoid gate; dense layers|
| Qwen3-MoE     | gate : Qwen3MoeTopKRouter       | as OLMoE                                            | 30B-A3B renormalises                     |
| DeepSeek-V2   | gate : DeepseekV2TopkRouter     | softmax fp32; greedy / group-limited; × scaling      | shared_experts; first dense layers       |
| DeepSeek-V3   | gate : DeepseekV3TopkRouter     | sigmoid; + correction bias for choice; groups        | weights = sigmoid scores                 |
| GPT-OSS       | router : GptOssTopKRouter       | top-k on logits, softmax over the k                 | router has a bias                        |
| Phi-3.5-MoE   | router : PhimoeTopKRouter       | sparsemixer (top-2)                                 | Linear subclass                          |
| DeepSeekMoE   | gate : MoEGate (remote code)    | softmax → top-k → renorm                            | returns no logits: recomputed            |
"""

from __future__ import annotations

import difflib
from typing import Any

from routelab.adapters import (
    deepseek_moe,
    deepseek_v2,
    deepseek_v3,
    gpt_oss,
    mixtral,
    olmoe,
    phimoe,
    qwen2_moe,
    qwen3_moe,
)
from routelab.adapters.base import RouterAdapter
from routelab.errors import RoutelabError

ADAPTERS: dict[str, RouterAdapter] = {
    a.architectures[0]: a
    for a in (
        olmoe.ADAPTER,
        mixtral.ADAPTER,
        qwen2_moe.ADAPTER,
        qwen3_moe.ADAPTER,
        deepseek_v2.ADAPTER,
        deepseek_v3.ADAPTER,
        gpt_oss.ADAPTER,
        phimoe.ADAPTER,
        deepseek_moe.ADAPTER,
    )
}


def supported_families() -> str:
    return ", ".join(f"{a.family} ({arch})" for arch, a in ADAPTERS.items())


def adapter_for_config(config: Any) -> RouterAdapter:
    """The adapter for a model config, by ``architectures`` then ``model_type``."""
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch in ADAPTERS:
            return ADAPTERS[arch]
    model_type = getattr(config, "model_type", None)
    for a in ADAPTERS.values():
        if model_type in a.model_types:
            return a
    found = archs[0] if archs else model_type
    near = difflib.get_close_matches(str(found), list(ADAPTERS), n=1)
    hint = f" Did you mean {near[0]}?" if near else ""
    raise RoutelabError(
        f"unsupported architecture {found!r} (model_type {model_type!r}): routelab has no router "
        f"adapter for it.{hint} Supported families: {supported_families()}. "
        "To add one, write src/routelab/adapters/<family>.py and register it in ADAPTERS."
    )


def adapter_by_name(name: str) -> RouterAdapter:
    """Look an adapter up by architecture or family name (case-insensitive)."""
    for arch, a in ADAPTERS.items():
        if name.lower() in (arch.lower(), a.family.lower()):
            return a
    raise RoutelabError(f"unknown family {name!r}. Supported families: {supported_families()}")


__all__ = ["ADAPTERS", "RouterAdapter", "adapter_for_config", "adapter_by_name", "supported_families"]
