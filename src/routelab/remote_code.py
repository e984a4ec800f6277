"""Remote code written for transformers 4.x, loaded on 5.x so that it computes the right thing.

A remote-code model is one whose classes come from the checkpoint's own .py files
(``trust_remote_code``; among routelab's families only DeepSeekMoE-16B). Code written for 4.x
meets four changes in 5.x (measured on DeepSeekMoE-16B's remote code with transformers 5.23;
``tests/remote_code/deepseek_moe/`` reproduces each one):

| 5.x change | what the 4.x code does then | routelab's fix (this module, called by load_model) |
|---|---|---|
| ``is_torch_fx_available`` removed | ImportError at load | ``install_import_shims``: put it back, returning False (it only decided whether to wrap helpers for torch.fx tracing) |
| ``config.rope_scaling`` is an alias of ``rope_parameters``; a None becomes {"rope_type": "default", "rope_theta": θ} | ``_init_rope`` takes the dict for a scaling and reads ``["type"]``: KeyError | ``restore_legacy_rope``: give ``rope_scaling`` back as config.json wrote it (None or {"type", "factor"}); θ stays in ``config.rope_theta`` |
| the model is built on the meta device and its non-persistent buffers are re-created as uninitialised memory, for ``_init_weights`` to refill | 4.x ``_init_weights`` refills only Linear/Embedding: RoPE tables (``inv_freq``, ``cos_cached``, ``sin_cached``) stay garbage; outputs finite but wrong, different per run (silent) | ``refill_constructor_buffers``: recompute every non-persistent buffer as the module's own constructor does and overwrite the ones that differ |
| legacy cache API (``DynamicCache.from_legacy_cache``, ``get_usable_length``, ``seen_tokens``) removed | ``use_cache=True`` and ``generate()`` fail | not patched: routelab loads with ``config.use_cache = False`` and decodes without a cache (adapter ``kv_cache=False``, routelab.generation) |

A router-hook parity check cannot see the third problem (the hook and the re-implemented rule
read the same wrong hidden states); only a forward independent of the loaded model can
(tests/test_deepseek_moe.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import transformers.utils as tu
import transformers.utils.import_utils as iu
from accelerate import init_empty_weights
from transformers.modeling_utils import local_torch_dtype
from transformers.utils.hub import TRANSFORMERS_DYNAMIC_MODULE_NAME

from routelab.errors import RoutelabError

# Names 5.x removed that 4.x remote code imports, with what they return for such code.
_REMOVED_IMPORTS = {
    # 4.x code asked it whether to wrap mask helpers for torch.fx tracing; routelab never traces.
    "is_torch_fx_available": lambda: False,
}


def is_remote_code(obj: Any) -> bool:
    """True for a config or model whose class was loaded from a checkpoint's own .py files."""
    return type(obj).__module__.startswith(TRANSFORMERS_DYNAMIC_MODULE_NAME + ".")


def install_import_shims() -> None:
    """Put back the names 5.x removed that 4.x remote code imports (idempotent)."""
    for module in (iu, tu):
        for name, stand_in in _REMOVED_IMPORTS.items():
            if not hasattr(module, name):
                setattr(module, name, stand_in)


def restore_legacy_rope(config: Any, written: Mapping[str, Any]) -> str | None:
    """Give a 4.x remote config its ``rope_scaling`` back as config.json (``written``) has it.

    5.x reads ``rope_scaling`` into ``rope_parameters`` and fills a None with the default RoPE
    dict, which 4.x code takes for a scaling to read ``["type"]`` from. A config.json that
    holds ``rope_parameters`` was written for 5.x and is left alone. Returns a description of
    the change, or None when nothing changed.
    """
    if "rope_parameters" in written:
        return None
    legacy = copy.deepcopy(written.get("rope_scaling"))
    found = getattr(config, "rope_parameters", None)
    if found == legacy:
        return None
    if getattr(config, "rope_theta", None) is None and isinstance(found, dict) and "rope_theta" in found:
        config.rope_theta = found["rope_theta"]
    # Assigned to the attribute behind the alias: the rope_scaling setter would re-standardise a dict.
    config.rope_parameters = legacy
    return f"config.rope_scaling {found!r} -> {legacy!r} (as written in config.json)"


def refill_constructor_buffers(model: torch.nn.Module) -> list[str]:
    """Recompute the non-persistent buffers of ``model`` as its modules' constructors do.

    A second copy of the model is built from its config with every parameter on the meta
    device and every buffer real (accelerate's ``init_empty_weights(include_buffers=False)``),
    under the model's dtype as the default dtype, as from_pretrained builds it: each
    ``__init__`` runs as written and computes its buffers, the parameters cost no memory. Each
    non-persistent buffer of ``model`` that differs from the copy's (loading left it
    uninitialised) is overwritten in place, keeping its device and dtype. Returns the names of
    the buffers overwritten.
    """
    with init_empty_weights(include_buffers=False), local_torch_dtype(model.dtype, type(model).__name__):
        reference = type(model)(copy.deepcopy(model.config))
    computed = dict(reference.named_buffers())
    refilled = []
    with torch.no_grad():
        for name, buffer in model.named_non_persistent_buffers():
            value = computed.get(name)
            if value is None or value.is_meta or value.shape != buffer.shape:
                raise RoutelabError(
                    f"cannot recompute the non-persistent buffer {name} of {type(model).__name__} "
                    f"({model.config.name_or_path}): its constructor does not compute it from the config alone, "
                    "so routelab cannot check that loading on transformers 5.x filled it. Use a model whose "
                    "classes ship with transformers, or report the model to routelab."
                )
            if not torch.equal(buffer.detach().cpu(), value.to(buffer.dtype)):
                buffer.copy_(value)
                refilled.append(name)
    return refilled
