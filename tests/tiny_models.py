"""Tiny random-init models of every supported family, built from each family's Config.

Router weights are widened (std 2/sqrt(H)) so routing is decisive and tests can see changes
(docs/routers.md pitfall 7). Configs include dense layers where the family has them, so layer
mapping by module name is exercised.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import save_file
from tokenizers import pre_tokenizers

from routelab.adapters import adapter_by_name
from routelab.remote_code import install_import_shims, restore_legacy_rope

H = 32
COMMON = dict(vocab_size=64, hidden_size=H, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, intermediate_size=48)

CONFIGS = {
    "OlmoeForCausalLM": lambda: tf.OlmoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2),
    "MixtralForCausalLM": lambda: tf.MixtralConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2),
    "Qwen2MoeForCausalLM": lambda: tf.Qwen2MoeConfig(
        **COMMON, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, decoder_sparse_step=1, mlp_only_layers=[0]),
    "Qwen3MoeForCausalLM": lambda: tf.Qwen3MoeConfig(
        **COMMON, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
        head_dim=8),
    "DeepseekV2ForCausalLM": lambda: tf.DeepseekV2Config(
        **{**COMMON, "num_key_value_heads": 4}, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
        first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        routed_scaling_factor=1.5, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8),
    "DeepseekV3ForCausalLM": lambda: tf.DeepseekV3Config(
        **{**COMMON, "num_key_value_heads": 4}, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
        first_k_dense_replace=1, n_group=4, topk_group=4, norm_topk_prob=True, routed_scaling_factor=2.5,
        q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8),
    "GptOssForCausalLM": lambda: tf.GptOssConfig(
        **COMMON, num_local_experts=8, num_experts_per_tok=2, head_dim=8, sliding_window=16),
    "PhimoeForCausalLM": lambda: tf.PhimoeConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2),
}
FAMILIES = [*CONFIGS, "DeepseekForCausalLM"]
SHARED_EXPERT_FAMILIES = ["Qwen2MoeForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekForCausalLM"]


def build(arch: str, seed: int = 0):
    """(model in eval mode, adapter) for a family's tiny random model."""
    torch.manual_seed(seed)
    if arch == "DeepseekForCausalLM":
        model = deepseek_moe_model(deepseek_moe_config(vocab_size=COMMON["vocab_size"]))
    else:
        model = getattr(tf, arch)(CONFIGS[arch]())
    adapter = adapter_by_name(arch)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module).__name__ == adapter.router_class:
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 2 / H**0.5)
                if hasattr(module, "e_score_correction_bias"):
                    module.e_score_correction_bias.copy_(0.05 * torch.randn(module.weight.shape[0], generator=gen))
    return model.eval(), adapter


# ---- DeepSeekMoE: routelab's local remote code (tests/remote_code/deepseek_moe) -----------------
DEEPSEEK_MOE_CODE = Path(__file__).parent / "remote_code" / "deepseek_moe"


def deepseek_moe_config(vocab_size: int, rope_scaling: dict | None = None) -> dict:
    """config.json of a tiny DeepSeekMoE: the keys of deepseek-ai/deepseek-moe-16b-base's, tiny sizes
    (64 routed experts top-6 → 8 top-2; 2 shared experts; layer 0 dense)."""
    return {
        "architectures": ["DeepseekForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_deepseek.DeepseekConfig",
            "AutoModel": "modeling_deepseek.DeepseekModel",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM",
        },
        "model_type": "deepseek",
        "attention_bias": False, "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "seq_aux": True,
        "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0,  # word_tokenizer's <s>, </s>, <pad>
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "hidden_act": "silu", "hidden_size": H,
        "initializer_range": 0.02, "intermediate_size": COMMON["intermediate_size"],
        "max_position_embeddings": 128, "moe_intermediate_size": 16,  # 128: CrowS sentences fit
        "n_routed_experts": 8, "n_shared_experts": 2, "norm_topk_prob": False, "num_experts_per_tok": 2,
        "num_attention_heads": COMMON["num_attention_heads"], "num_key_value_heads": COMMON["num_key_value_heads"],
        "num_hidden_layers": COMMON["num_hidden_layers"], "rms_norm_eps": 1e-6,
        "rope_scaling": rope_scaling, "rope_theta": 10000.0, "scoring_func": "softmax",
        "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True, "vocab_size": vocab_size,
    }  # fmt: skip


def deepseek_moe_model(config_json: dict):
    """The local remote-code model built in this process from ``config_json`` (random weights)."""
    install_import_shims()  # the remote code imports is_torch_fx_available, removed in transformers 5.x
    # Imported here, not at the top: the shim above must be in place before the module is imported.
    from remote_code.deepseek_moe.configuration_deepseek import DeepseekConfig
    from remote_code.deepseek_moe.modeling_deepseek import DeepseekForCausalLM

    # a deep copy: 5.x standardises the rope_scaling dict it is given in place
    config = DeepseekConfig(**{k: copy.deepcopy(v) for k, v in config_json.items() if k != "model_type"})
    restore_legacy_rope(config, config_json)  # as load_model does with the saved config.json
    config.use_cache = False  # as load_model does for a family with kv_cache=False (legacy cache API)
    return DeepseekForCausalLM(config)


def save_tiny_deepseek_moe(path, texts: list[str], seed: int = 0, rope_scaling: dict | None = None):
    """A tiny DeepSeekMoE folder laid out like the Hub's deepseek-ai/deepseek-moe-16b-base: config.json
    with auto_map, the remote code (configuration_deepseek.py, modeling_deepseek.py), model.safetensors
    (written directly, as a 4.x checkpoint: 5.x save_pretrained fails on the remote code's list-valued
    _tied_weights_keys) and a word-level tokenizer over the words of ``texts``. Returns the dir."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = {w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t)}  # as the tokenizer splits
    tok = word_tokenizer(sorted(words))
    config_json = deepseek_moe_config(len(tok), rope_scaling)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == tuple(
        config_json[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id"))
    torch.manual_seed(seed)
    model = deepseek_moe_model(config_json)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                # unit gain (std 1/sqrt(fan-in)), not 0.02: attention then matters, so a wrong RoPE shows
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
            if type(module).__name__ == "MoEGate":  # widened as build() widens routers (docs/routers.md pitfall 7)
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 2 / H**0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_json, indent=2))
    for name in ("configuration_deepseek.py", "modeling_deepseek.py"):
        shutil.copy(DEEPSEEK_MOE_CODE / name, path / name)
    tok.save_pretrained(path)
    return path


def word_tokenizer(words: list[str]):
    """A word-level fast tokenizer (no download) that prepends BOS, like the testbed's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def text_tokenizer(texts: list[str]):
    """A word-level fast tokenizer over the words of ``texts`` ([UNK] 0, [BOS] 1, BOS prepended)."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1}
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]", t):
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # splits "middle-aged" into 3 tokens
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]")


WORDS = "the a doctor nurse female male old young engineer teacher is was kind . , and of".split()


def save_tiny_olmoe(path, seed: int = 0):
    """Save a tiny OLMoE (widened routers) + word tokenizer with save_pretrained; return the dir."""
    model, _ = build("OlmoeForCausalLM", seed)
    tok = word_tokenizer(WORDS)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
