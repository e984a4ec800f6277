"""Loading a model from a spec: a Hub id or a local directory, with its router adapter.

The same loader serves real checkpoints and the testbeds (saved with save_pretrained).
Remote code written for transformers 4.x (DeepSeekMoE-16B) gets the fixes of
routelab.remote_code, so that it loads and computes what it computed on 4.x; a family whose
remote code has no working KV cache (adapter ``kv_cache=False``) is loaded with
``config.use_cache = False``.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
import transformers
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from routelab import compute
from routelab.adapters import RouterAdapter, adapter_for_config
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.remote_code import install_import_shims, is_remote_code, refill_constructor_buffers, restore_legacy_rope
from routelab.routing import find_routers

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")
# Files one of which a saved tokenizer has (tokenizers' JSON, sentencepiece, BPE/WordPiece vocabularies).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model")
# How the `routelab` command spells each spec setting (a spec from params.yaml names models.<m>.<setting>).
CLI_FLAGS = {"path": "--model", "dtype": "--dtype", "device": "--device", "device_map": "--device-map",
             "trust_remote_code": "--trust-remote-code", "batch_size": "--batch-size"}
TESTBED_HINT = ("for the testbed models (control, diffuse, routed, routed_null, nonrouted) "
                "run `dvc repro testbed_train testbed_plant` first")


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
    generation: list[str] | None = None  # the model's own generation protocols (testbed); null = generation.protocols
    notes: str = ""  # free text (e.g. what the model is)

    def from_source(self, source: str) -> "ModelSpec":
        """Record where the user wrote this spec, for error messages: ``"cli"`` (the routelab
        flags) or a params key (``models.<name>``). Not a field: params and pinned specs
        (hub_model) never see it. Returns the spec."""
        self._source = source
        return self

    def setting(self, name: str) -> str:
        """How the user wrote setting ``name``: ``--device`` or ``models.<name>.device``."""
        source = getattr(self, "_source", None)
        if source == "cli":
            return CLI_FLAGS.get(name, name)
        return f"{source}.{name}" if source else f"model {name}"

    def check(self) -> "ModelSpec":
        """Refuse a device, dtype or batch size this machine or routelab cannot use, before
        anything is loaded. Returns the spec."""
        if self.device != "auto":
            if not _DEVICE.fullmatch(self.device):
                raise RoutelabError(
                    f"{self.setting('device')} {self.device}: unknown device; use auto, cpu, cuda, cuda:N or mps")
            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise RoutelabError(
                    f"{self.setting('device')} {self.device}: this torch ({torch.__version__}) sees no CUDA GPU; "
                    "use cpu or auto"
                )
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if self.device.startswith("cuda") and index >= torch.cuda.device_count():
                raise RoutelabError(
                    f"{self.setting('device')} {self.device}: only {torch.cuda.device_count()} CUDA GPU(s) here "
                    f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
                )
            if self.device == "mps" and not torch.backends.mps.is_available():
                raise RoutelabError(f"{self.setting('device')} mps: this machine has no MPS device; use cpu or auto")
        self.resolved_dtype()  # an unknown dtype is an error
        if self.batch_size < 1:
            raise RoutelabError(f"{self.setting('batch_size')} {self.batch_size}: the batch size must be ≥ 1")
        return self

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        if self.dtype not in _DTYPES:
            raise RoutelabError(
                f"{self.setting('dtype')} {self.dtype}: unknown dtype; use one of auto, {', '.join(_DTYPES)}")
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

    Raises RoutelabError, naming the setting as the user wrote it, for a device this machine
    lacks, a missing or incomplete local folder (config, weights, tokenizer), a Hub id that
    cannot be reached, and an unsupported architecture.
    """
    if isinstance(spec, str):
        spec = ModelSpec(path=spec)
    elif isinstance(spec, dict):
        spec = section(ModelSpec, spec, "models.<name>")
    spec.check()
    spec.path = str(Path(spec.path).expanduser()) if spec.path.startswith("~") else spec.path
    where = f"{spec.setting('path')} {spec.path}"
    local = _is_local(spec.path)
    if local:
        _check_folder(spec, where)
    else:
        _check_hub(spec, where)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.trust_remote_code:
        install_import_shims()  # before any remote .py file is imported (routelab.remote_code)
    try:
        config = AutoConfig.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: remote code without trust_remote_code
        hint = (f"; remote-code models such as DeepSeekMoE need {spec.setting('trust_remote_code')}"
                if "trust_remote_code" in str(exc) else "")
        raise RoutelabError(f"{where}: cannot load its config: {_first_line(exc)}{hint}") from None
    adapter = adapter_for_config(config)  # unknown architecture → clear error, before loading weights
    if local and not any((Path(spec.path) / name).is_file() for name in _TOKENIZER_FILES):
        # Checked here: without its files AutoTokenizer builds an empty tokenizer of the config's
        # model type, and every prompt "tokenises to nothing".
        raise RoutelabError(
            f"{where}: no tokenizer files in this folder (one of {', '.join(_TOKENIZER_FILES)}): save the "
            "tokenizer beside the model (tokenizer.save_pretrained(folder))"
        )
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
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.path, **model_kwargs)
    except (OSError, SafetensorError, EOFError, pickle.UnpicklingError) as exc:  # missing or truncated weights
        again = (f"copy it again ({TESTBED_HINT})" if local
                 else "delete it from the Hugging Face cache and download it again")
        raise RoutelabError(
            f"{where}: cannot load its weights ({_first_line(exc)}): is the folder complete? {again}") from None
    if not spec.device_map:
        model = model.to(spec.resolved_device())
    if is_remote_code(model):
        refilled = Counter(name.rsplit(".", 1)[-1] for name in refill_constructor_buffers(model))
        if refilled:
            which = ", ".join(f"{name} ×{n}" for name, n in refilled.items())
            fixes.append(f"recomputed non-persistent buffers that loading left uninitialised: {which}")
    # threads and (on CUDA) deterministic kernels; warns if torch runs off the pinned CPU path
    compute.configure_torch(spec.resolved_device() if not spec.device_map else ("cuda" if torch.cuda.is_available() else "cpu"))
    compute.check()
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise RoutelabError(f"{where}: cannot load its tokenizer: {_first_line(exc)}") from None
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


def _is_local(path: str) -> bool:
    """A local folder, or meant as one: not of the Hub's ``owner/name`` form, or its ``owner``
    part is a folder here (``models/testbd`` beside a ``models/`` folder is a typo, not a Hub id)."""
    if path.startswith((".", "/")) or Path(path).exists() or path.count("/") != 1:
        return True
    return Path(path.split("/")[0]).is_dir()


def _check_folder(spec: ModelSpec, where: str) -> None:
    """A local model folder exists and holds a config.json (checked before loading)."""
    folder = Path(spec.path)
    relative = "" if folder.is_absolute() else f" (relative to {Path.cwd()})"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else f"not found{relative}"
        raise RoutelabError(f"{where}: {what}: give a saved model's folder or a Hub id (owner/name); {TESTBED_HINT}")
    if not (folder / "config.json").is_file():
        raise RoutelabError(
            f"{where}: no config.json in this folder: not a saved model (save_pretrained writes config.json, "
            f"the weights and the tokenizer files); {TESTBED_HINT}"
        )


def _check_hub(spec: ModelSpec, where: str) -> None:
    """A Hub id is in the local Hugging Face cache or answers on the Hub, checked with one quick
    request: otherwise transformers retries for half a minute and then blames the connection."""
    if isinstance(huggingface_hub.try_to_load_from_cache(spec.path, "config.json", revision=spec.revision), str):
        return
    not_local = f"no such local folder (relative to {Path.cwd()})"
    if huggingface_hub.is_offline_mode():
        raise RoutelabError(
            f"{where}: {not_local}, and not in the Hugging Face cache while the Hub is offline (HF_HUB_OFFLINE): "
            "check the path, or download the model with the Hub online"
        )
    try:
        huggingface_hub.model_info(spec.path, revision=spec.revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise RoutelabError(
            f"{where}: {not_local}, and no such model{' revision' if spec.revision else ''} on the Hugging Face Hub "
            "(a private or gated model needs `hf auth login`): check the path or the Hub id"
        ) from None
    except Exception as exc:  # noqa: BLE001 — network, proxy, auth, rate limit: all end the same way
        raise RoutelabError(
            f"{where}: {not_local}, and the Hugging Face Hub cannot be reached ({type(exc).__name__}: "
            f"{_first_line(exc)}): check the path, or the network"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages run to many lines)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def model_spec(params: dict[str, Any], name: str) -> ModelSpec:
    """The spec of model ``name`` from params.yaml's ``models`` section."""
    models = params.get("models") or {}
    if name not in models:
        raise RoutelabError(f"model {name!r} is not in params.yaml `models` (known: {', '.join(models)})")
    return section(ModelSpec, models[name], f"models.{name}").from_source(f"models.{name}")


HASH_CACHE = Path(".dvc") / "tmp" / "routelab_hashes.json"  # (path, size, mtime_ns) -> sha256, per project


def fingerprint_folder(path: str | Path, *, setting: str = "the model path") -> dict[str, str]:
    """{relative file: sha256} of every file under a local model folder (stage local_model).

    Hashes are cached by (absolute path, size, mtime_ns) in ``HASH_CACHE``: only new or changed
    files are read again. A folder without config.json is refused, naming ``setting``."""
    import hashlib
    import json
    import os

    root = Path(path).expanduser()
    if not (root / "config.json").is_file():
        raise RoutelabError(f"{setting} {root}: no config.json there: point it at a saved model folder (save_pretrained)")
    cache = json.loads(HASH_CACHE.read_text()) if HASH_CACHE.is_file() else {}
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts):
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            h = hashlib.sha256()
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            cache[key] = h.hexdigest()
        out[str(f.relative_to(root))] = cache[key]
    HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = HASH_CACHE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, sort_keys=True))
    tmp.replace(HASH_CACHE)
    return out
