"""Tiny random-init models of every supported family, built from each family's Config.

Router weights are widened (std 2/sqrt(H)) so routing is decisive and tests can see changes
(ROUTERS.md pitfall 7). Configs include dense layers where the family has them, so layer
mapping by module name is exercised.
"""

from __future__ import annotations

import torch
import transformers as tf

from routelab.adapters import adapter_by_name

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
        from deepseek_moe_local import DeepseekConfig, DeepseekForCausalLM

        model = DeepseekForCausalLM(DeepseekConfig(hidden_size=H))
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
