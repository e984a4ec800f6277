"""Loading a model from a spec: a Hub id or a local directory, with its router adapter.

The same loader serves real checkpoints and the testbed (saved with save_pretrained).
Remote code written for transformers 4.x (DeepSeekMoE-16B) gets the fixes of
routelab.remote_code, so that it loads and computes what it computed on 4.x; a family whose
remote code has no working KV cache (adapter ``kv_cache=False``) is loaded with
``config.use_cache = False``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from routelab.adapters import RouterAdapter, adapter_for_config
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.remote_code import install_import_shims, is_remote_code, refill_constructor_buffers, restore_legacy_rope
from routelab.routing import find_routers

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """One entry of params.yaml ``models:``."""

    path: str  # Hub id (e.g. allenai/OLMoE-1B-7B-0924) or a local directory
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (bf16 on cuda, fp32 on cpu)
    device: str = "auto"  # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    device_map: str | None = None  # e.g. "auto" to shard over several GPUs (accelerate)
    trust_remote_code: bool = False  # needed for DeepSeekMoE-16B (remote code)
    revision: str | None = None  # Hub revision (commit, tag or branch)
    batch_size: int = 16  # forward batch size for extraction and scoring
    vocabulary: str = "english"  # prompt words: english (real models) | a testbed corpus dir (its own words)
    benchmarks: dict[str, str] = field(default_factory=dict)  # the model's own benchmark files (testbed)
    primer: str | None = None  # the model's own TruthfulQA-style primer (testbed)
    notes: str = ""  # free text (e.g. what the model is)

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        if self.dtype not in _DTYPES:
            raise RoutelabError(f"model dtype {self.dtype!r} unknown; use one of {['auto', *_DTYPES]}")
        return _DTYPES[self.dtype]


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, its router adapter and routing facts."""

    model: Any
    tokenizer: Any
    adapter: RouterAdapter
    spec: ModelSpec
    num_experts: int
    top_k: int
    moe_layers: list[int] = field(default_factory=list)
    load_fixes: list[str] = field(default_factory=list)  # what loading patched (remote code only; routelab.remote_code)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        fixes = {"load_fixes": self.load_fixes} if self.load_fixes else {}  # native models: no key, as before
        return {
            "model": self.spec.path,
            "family": self.adapter.family,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "moe_layers": self.moe_layers,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            **fixes,
        }


def load_model(spec: ModelSpec | dict[str, Any] | str) -> LoadedModel:
    """Load tokenizer + causal LM from ``spec`` and find its routers.

    Raises RoutelabError for a missing local directory or an unsupported architecture.
    """
    if isinstance(spec, str):
        spec = ModelSpec(path=spec)
    elif isinstance(spec, dict):
        spec = section(ModelSpec, spec, "models.<name>")
    spec.path = str(Path(spec.path).expanduser()) if spec.path.startswith("~") else spec.path
    looks_local = spec.path.startswith((".", "/")) or Path(spec.path).exists() or spec.path.count("/") != 1
    if looks_local and not Path(spec.path).is_dir():
        raise RoutelabError(
            f"model path {spec.path!r} is not a directory and not a Hub id (owner/name). "
            "For the testbed run `dvc repro testbed_train` first."
        )
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.trust_remote_code:
        install_import_shims()  # before any remote .py file is imported (routelab.remote_code)
    try:
        config = AutoConfig.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: remote code without trust_remote_code
        raise RoutelabError(
            f"cannot load the config of {spec.path!r}: {exc} "
            "(remote-code models such as DeepSeekMoE need trust_remote_code: true)"
        ) from None
    adapter = adapter_for_config(config)  # unknown architecture → clear error, before loading weights
    fixes: list[str] = []  # what loading patched, kept in LoadedModel.load_fixes
    if is_remote_code(config):
        written, _ = PretrainedConfig.get_config_dict(spec.path, revision=spec.revision)  # config.json as on disk
        rope = restore_legacy_rope(config, written)
        fixes += [rope] if rope else []
    if not adapter.kv_cache:
        # On the config, not as a from_pretrained keyword: next to config= that keyword would go
        # to the model's __init__.
        config.use_cache = False
        fixes.append("config.use_cache = False (legacy KV cache API; decoding recomputes the prefix)")
    model_kwargs = dict(kwargs, config=config, dtype=spec.resolved_dtype())
    if spec.device_map:
        model_kwargs["device_map"] = spec.device_map
    model = AutoModelForCausalLM.from_pretrained(spec.path, **model_kwargs)
    if not spec.device_map:
        model = model.to(spec.resolved_device())
    if is_remote_code(model):
        refilled = Counter(name.rsplit(".", 1)[-1] for name in refill_constructor_buffers(model))
        if refilled:
            which = ", ".join(f"{name} ×{n}" for name, n in refilled.items())
            fixes.append(f"recomputed non-persistent buffers that loading left uninitialised: {which}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    if tokenizer.pad_token_id is None:
        # Pads are masked out everywhere; any id works, EOS is the usual choice.
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "right"
    routers = find_routers(model, adapter)
    num_experts, top_k = adapter.sizes(model.config)
    return LoadedModel(model, tokenizer, adapter, spec, num_experts, top_k, list(routers), fixes)


def model_spec(params: dict[str, Any], name: str) -> ModelSpec:
    """The spec of model ``name`` from params.yaml's ``models`` section."""
    models = params.get("models") or {}
    if name not in models:
        raise RoutelabError(f"model {name!r} is not in params.yaml `models` (known: {', '.join(models)})")
    return section(ModelSpec, models[name], f"models.{name}")
