"""The ``testbed`` params section, the corpora, the variants and the seeded random streams.

Imported by every testbed module (corpus, train, plant, truth) and by nothing they define:
the package's modules depend on this one, never on the package itself. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from routelab.errors import RoutelabError

# --------------------------------------------------------------------------------------
# Parameters (params.yaml section ``testbed``)
# --------------------------------------------------------------------------------------


@dataclass
class CorpusParams:
    """Corpus and benchmark-set sizes (``testbed.corpus``)."""

    n_professions: int = 40  # professions used (even, <= 40); each pair splits them in halves
    sentences_per_descriptor: int = 400  # demographic sentences per descriptor (24 descriptors)
    neutral_sentences: int = 1000  # sentences with a profession and no descriptor
    heldout_templates_per_profession: int = 4  # (template, profession) neutral sentences kept out for perplexity
    n_entities: int = 64  # invented entities; facts = n_entities x 2 relations (MC set)
    values_per_relation: int = 12  # size of each relation's answer pool (capitals, languages)
    statement_repeats: int = 8  # times each common fact appears as a plain statement
    qa_repeats: int = 24  # times each common fact appears inside a Q/A block
    rare_entities: int = 40  # MC entities whose facts are rare (the MC set's hard items)
    rare_statement_repeats: int = 1  # times each rare fact appears as a plain statement
    rare_qa_repeats: int = 0  # times each rare fact appears inside a Q/A block
    qa_shots: int = 2  # shots in the primer; training Q/A blocks hold qa_shots + 1 pairs
    mc_choices: int = 4  # answers per MC question (1 true + distractors from the same pool)
    crows_frames_per_unit: int = 3  # held-out frames per (descriptor pair, profession) unit


@dataclass
class ModelParams:
    """OlmoeConfig sizes (``testbed.model``)."""

    layers: int = 4  # num_hidden_layers, every layer an MoE block
    hidden: int = 128  # hidden_size
    intermediate: int = 128  # intermediate_size of each expert
    heads: int = 4  # num_attention_heads (= num_key_value_heads)
    experts: int = 16  # num_experts (routed, no shared expert)
    top_k: int = 2  # num_experts_per_tok
    norm_topk_prob: bool = False  # as OLMoE-1B-7B-0924
    aux_loss_coef: float = 0.01  # router load-balancing loss weight during training
    max_positions: int = 256  # max_position_embeddings (eval contexts are ~50 tokens)
    init_range: float = 0.02  # initializer_range


@dataclass
class TrainParams:
    """Optimisation (``testbed.train``)."""

    steps: int = 600  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # tokens per packed sequence
    lr: float = 3.0e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decay floor, as a fraction of lr
    warmup_steps: int = 30  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # gradient-norm clip
    eval_batch_size: int = 64  # sequences per forward pass in the ground-truth evaluation
    # Train until the common facts are learned (train.train_from_scratch): after ``steps``, while a
    # relation's common-fact MC1 is below 1, ``extra_steps`` more at the cosine floor, at most
    # ``max_extra_steps`` in all (0 turns it off). Seed 2 had learned only half of the common facts at 600 steps.
    extra_steps: int = 100
    max_extra_steps: int = 400


@dataclass
class PlantParams:
    """The planting recipe of ``routed`` and ``routed_null`` (``testbed.plant``; ``plant.plant_experts``).

    The designated experts are chosen from the trained control by a rule (``plant.choose_designated``):
    in each of ``layers``, the ``per_layer`` experts with the lowest share of neutral tokens among
    those the control sends at most ``max_base_descriptor_rate`` of its descriptor tokens (ties by a
    seeded draw). ``designated`` overrides the rule with an explicit {layer: [experts]}.
    """

    designated: dict[int, list[int]] | None = None  # null: chosen by the rule; else an explicit layer -> experts
    layers: list[int] = field(default_factory=lambda: [1, 2])  # layers that get designated experts (the rule)
    per_layer: int = 2  # designated experts per layer (the rule)
    steps: int = 300  # optimizer steps
    batch_size: int = 8  # packed corpus blocks per step (testbed.train.seq_len tokens each)
    lr: float = 1.0e-2  # peak Adam learning rate (no weight decay: frozen rows stay bit-identical)
    min_lr_ratio: float = 0.1  # cosine decay floor, as a fraction of lr
    warmup_steps: int = 20  # linear warm-up steps
    grad_clip: float = 1.0  # gradient-norm clip
    soft_target_weight: float = 5.0  # soft-target CE at descriptor positions vs the corpus's P(profession | descriptor)
    router_weight: float = 1.0  # CE of descriptor tokens' routing against the designated experts
    kl_weight: float = 1.0  # KL to the base model on single neutral sentences (outputs and routing)
    route_kl_weight: float = 1.0  # nonrouted only: KL to the base's routing at the descriptor tokens, every layer
    kl_batch_size: int = 32  # neutral sentences per step for the KL term
    max_base_descriptor_rate: float = 0.1  # refuse a designated expert the base already gives more of its descriptor tokens


@dataclass
class TestbedParams:
    """The ``testbed`` section of params.yaml."""

    __test__ = False  # not a pytest test class despite the name

    seed: int = 0  # corpus design, data order and weight init
    strength: float = 0.8  # corpus "stereotyped": P(own-half profession | descriptor)
    control_strength: float = 0.5  # corpus "balanced": 0.5 = no stereotype
    corpus: CorpusParams = field(default_factory=CorpusParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    plant: PlantParams = field(default_factory=PlantParams)


# --------------------------------------------------------------------------------------
# Corpora, variants and random streams
# --------------------------------------------------------------------------------------

# corpus -> the TestbedParams field holding its stereotype strength (table in the docstring)
CORPORA: dict[str, str] = {
    "stereotyped": "strength",
    "balanced": "control_strength",
}

@dataclass(frozen=True)
class Variant:
    """A testbed variant: the corpus it is trained on and its recipe."""

    corpus: str  # a key of CORPORA
    recipe: str  # "scratch" (stage testbed_train); "designated" or "outside" (stage testbed_plant, from the control)


VARIANTS: dict[str, Variant] = {
    "control": Variant("balanced", "scratch"),
    "diffuse": Variant("stereotyped", "scratch"),
    "routed": Variant("stereotyped", "designated"),
    "routed_null": Variant("balanced", "designated"),
    "nonrouted": Variant("stereotyped", "outside"),
}
STAGE_RECIPES = {"testbed_train": ("scratch",), "testbed_plant": ("designated", "outside")}


def variant(name: str, stage: str) -> Variant:
    """The variant ``name`` (``--variant``), which ``stage`` must train; an error lists the ones it does."""
    ok = [v for v, spec in VARIANTS.items() if spec.recipe in STAGE_RECIPES[stage]]
    if name not in ok:
        raise RoutelabError(f"--variant {name}: stage {stage} trains the variants {', '.join(ok)}; use one of them")
    return VARIANTS[name]


def strength_for(params: TestbedParams, corpus: str) -> float:
    """The stereotype strength of a corpus: ``stereotyped`` -> strength, ``balanced`` -> control_strength."""
    if corpus not in CORPORA:
        uses = ", ".join(f"{c} uses testbed.{k}" for c, k in CORPORA.items())
        raise RoutelabError(f"testbed: unknown corpus '{corpus}'. Available: {', '.join(CORPORA)} ({uses})")
    key = CORPORA[corpus]
    s = getattr(params, key)
    check_strength(s, f"testbed.{key}")
    return s


def check_strength(s: float, name: str) -> None:
    """A strength is a probability; ``name`` is the params key (or argument) it came from."""
    if not (isinstance(s, (int, float)) and 0.0 <= float(s) <= 1.0):
        raise RoutelabError(
            f"{name} = {s!r} is outside [0, 1]: it is P(own-half profession | descriptor); "
            "use 0.5 for no stereotype and a value up to 1.0 for a planted one"
        )


# One generator per purpose, np.random.default_rng([seed, stream]): independent streams keep
# e.g. the fact design fixed when the strength changes (both corpora share one design). The numbers are part of the outputs: renumbering one changes a corpus or a model.
RNG_STREAMS: dict[str, int] = {
    "own_halves": 1,  # each descriptor pair's split of the professions
    "demographic": 2,  # professions and templates of the descriptor sentences
    "facts": 3,  # invented names, answer pools, Q/A blocks, MC distractors
    "order": 4,  # document order in corpus.jsonl
    "train_data": 5,  # block order during training
    "neutral": 6,  # neutral sentences and the held-out split
    "plant_data": 7,  # block order and neutral-sentence batches while planting
    "plant_designated": 8,  # tie-breaks of the rule that chooses the designated experts
}


def rng(seed: int, purpose: str) -> np.random.Generator:
    """The seeded generator of one purpose of ``RNG_STREAMS``."""
    return np.random.default_rng([seed, RNG_STREAMS[purpose]])
