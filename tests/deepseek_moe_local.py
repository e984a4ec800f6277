"""A local stand-in for DeepSeekMoE-16B's remote code (deepseek-ai/deepseek-moe-16b-base).

Same interface as the remote ``MoEGate`` (raw weight (K, H); forward takes (B, S, H) and
returns (topk_idx, topk_weight, aux_loss) with no logits) inside a minimal decoder whose
module names follow the remote model (model.layers.{i}.mlp.gate, .experts, .shared_experts).
Attention is left out: the adapter only touches the gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeepseekConfig:
    model_type = "deepseek"
    architectures = ["DeepseekForCausalLM"]

    def __init__(self, vocab_size=64, hidden_size=32, num_hidden_layers=3, n_routed_experts=8,
                 num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, norm_topk_prob=False,
                 moe_intermediate_size=16):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_shared_experts = n_shared_experts
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.moe_intermediate_size = moe_intermediate_size
        self.scoring_func = "softmax"


class MoEGate(nn.Module):
    """The remote gate, as in modeling_deepseek.py (eval path)."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.scoring_func = config.scoring_func
        self.norm_topk_prob = config.norm_topk_prob
        self.gating_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty((self.n_routed_experts, self.gating_dim)))
        nn.init.normal_(self.weight, std=2 / config.hidden_size**0.5)

    def forward(self, hidden_states):
        bsz, seq_len, h = hidden_states.shape
        hidden_states = hidden_states.view(-1, h)
        logits = F.linear(hidden_states, self.weight, None)
        scores = logits.softmax(dim=-1)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        if self.top_k > 1 and self.norm_topk_prob:
            denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
            topk_weight = topk_weight / denominator
        return topk_idx, topk_weight, None


class DeepseekMLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DeepseekMoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList(
            DeepseekMLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.n_routed_experts)
        )
        self.gate = MoEGate(config)
        self.shared_experts = DeepseekMLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)

    def forward(self, hidden_states):
        identity = hidden_states
        orig_shape = hidden_states.shape
        topk_idx, topk_weight, _ = self.gate(hidden_states)
        flat = hidden_states.view(-1, hidden_states.shape[-1])
        out = torch.zeros_like(flat)
        for slot in range(topk_idx.shape[-1]):
            for e in topk_idx[:, slot].unique().tolist():
                rows = topk_idx[:, slot] == e
                out[rows] += topk_weight[rows, slot, None].to(flat.dtype) * self.experts[e](flat[rows])
        return out.view(*orig_shape) + self.shared_experts(identity)


class DeepseekDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        moe = layer_idx >= config.first_k_dense_replace
        self.mlp = DeepseekMoE(config) if moe else DeepseekMLP(config.hidden_size, config.moe_intermediate_size)

    def forward(self, h):
        return h + self.mlp(self.norm(h))


class DeepseekModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DeepseekDecoderLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(self, input_ids):
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return h


class Output:
    def __init__(self, logits):
        self.logits = logits


class DeepseekForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = DeepseekModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids=None, attention_mask=None, **_):
        return Output(self.lm_head(self.model(input_ids)))
