"""Configuration of routelab's local DeepSeekMoE remote code (a test double, written for routelab).

It mirrors the configuration that ships as remote code with deepseek-ai/deepseek-moe-16b-base,
as a transformers 4.x remote config: the RoPE settings are the legacy ``rope_theta`` and
``rope_scaling`` (None, or {"type": "linear", "factor": f}) attributes, set before
``PretrainedConfig.__init__`` runs. On transformers 5.x, ``rope_scaling`` is an alias of
``rope_parameters`` and a None is filled with {"rope_type": "default", "rope_theta": ...}.
"""

from transformers.configuration_utils import PretrainedConfig


class DeepseekConfig(PretrainedConfig):
    model_type = "deepseek"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=102400,
        hidden_size=4096,
        intermediate_size=11008,  # dense MLP width (layers before first_k_dense_replace)
        moe_intermediate_size=1407,  # width of one routed expert
        num_hidden_layers=30,
        num_attention_heads=32,
        num_key_value_heads=32,
        n_shared_experts=None,  # shared experts, fused into one MLP of n × moe_intermediate_size
        n_routed_experts=None,  # K
        num_experts_per_tok=None,  # k
        moe_layer_freq=1,  # every moe_layer_freq-th layer (from first_k_dense_replace on) is MoE
        first_k_dense_replace=0,  # the first layers keep a dense MLP
        norm_topk_prob=False,  # renormalise the k selected weights
        scoring_func="softmax",
        aux_loss_alpha=0.001,  # load-balancing loss weight (training only)
        seq_aux=True,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=100000,
        eos_token_id=100001,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,  # None or {"type": "linear", "factor": f} (the 4.x format)
        attention_bias=False,
        attention_dropout=0.0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.n_shared_experts = n_shared_experts
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layer_freq = moe_layer_freq
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._validate_legacy_rope_scaling()
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate_legacy_rope_scaling(self):
        """The 4.x check: rope_scaling is None or exactly {"type": ..., "factor": > 1}."""
        scaling = self.rope_scaling
        if scaling is None:
            return
        if not isinstance(scaling, dict) or set(scaling) != {"type", "factor"}:
            raise ValueError(f"rope_scaling must be None or a dict with keys 'type' and 'factor', got {scaling}")
        if scaling["type"] != "linear":  # the original also has "dynamic" (NTK); this double only linear
            raise ValueError(f"rope_scaling type must be 'linear', got {scaling['type']}")
        if not isinstance(scaling["factor"], (int, float)) or scaling["factor"] <= 1.0:
            raise ValueError(f"rope_scaling factor must be a number > 1, got {scaling['factor']}")
