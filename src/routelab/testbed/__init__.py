"""The planted-bias testbed: a small OLMoE trained on CPU on a generated corpus (METHOD.md §5).

Real MoE checkpoints need a GPU and a download. The testbed gives ground truth instead: a
corpus in which the stereotype strength, the facts and the group sizes are parameters, and a
real-architecture model (``OlmoeForCausalLM``) trained on it in a few minutes on 2 CPU cores.
With ``strength`` > 0.5 every stage must find a stereotype preference; with the control
(``control_strength`` = 0.5) it must find none.

Variants (``VARIANTS``; a variant names a corpus, a model folder and a metrics file):

| variant | corpus strength (params key) | recipe                              |
|---------|------------------------------|-------------------------------------|
| testbed | testbed.strength             | ``train.train_from_scratch``        |
| control | testbed.control_strength     | ``train.train_from_scratch``        |

Modules: ``corpus`` (words, generation, word-level tokenizer, the corpus folder),
``train`` (OlmoeConfig, deterministic training from scratch, the model folder), ``truth``
(the testbed's own ground-truth scorer of any saved model folder). This file holds the
``testbed`` params section, the variants and the seeded random streams they all share.

Usable without DVC::

    from routelab import testbed
    cfg = testbed.TestbedParams()
    corpus = testbed.generate_corpus(cfg.corpus, strength=testbed.strength_for(cfg, "testbed"), seed=cfg.seed)
    testbed.write_corpus(corpus, "data/testbed/testbed")
    metrics = testbed.train_and_evaluate("data/testbed/testbed", "data/models/testbed", cfg)
    truth = testbed.ground_truth("data/models/testbed", "data/testbed/testbed")  # any saved model folder
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    statement_repeats: int = 8  # times each fact appears as a plain statement
    qa_repeats: int = 12  # times each fact appears inside a Q/A block
    qa_shots: int = 6  # shots in the primer; training Q/A blocks hold qa_shots + 1 pairs
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
    max_positions: int = 256  # max_position_embeddings (eval contexts are ~130 tokens)
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
    threads: int = 2  # torch CPU threads (fixed: the float sums depend on it)
    eval_batch_size: int = 64  # sequences per forward pass in the ground-truth evaluation


@dataclass
class TestbedParams:
    """The ``testbed`` section of params.yaml."""

    __test__ = False  # not a pytest test class despite the name

    seed: int = 0  # corpus design, data order and weight init
    strength: float = 0.8  # variant "testbed": P(own-half profession | descriptor)
    control_strength: float = 0.5  # variant "control": 0.5 = no stereotype
    corpus: CorpusParams = field(default_factory=CorpusParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)


# --------------------------------------------------------------------------------------
# Variants and random streams
# --------------------------------------------------------------------------------------

# variant -> the TestbedParams field holding its stereotype strength (table in the docstring)
VARIANTS: dict[str, str] = {
    "testbed": "strength",
    "control": "control_strength",
}


def strength_for(params: TestbedParams, variant: str) -> float:
    """The stereotype strength of a variant: ``testbed`` -> strength, ``control`` -> control_strength."""
    if variant not in VARIANTS:
        uses = ", ".join(f"{v} uses testbed.{k}" for v, k in VARIANTS.items())
        raise RoutelabError(f"testbed: unknown variant '{variant}'. Available: {', '.join(VARIANTS)} ({uses})")
    key = VARIANTS[variant]
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
# e.g. the fact design fixed when the strength changes (the control shares the testbed's
# design). The numbers are part of the outputs: renumbering one changes a corpus or a model.
RNG_STREAMS: dict[str, int] = {
    "own_halves": 1,  # each descriptor pair's split of the professions
    "demographic": 2,  # professions and templates of the descriptor sentences
    "facts": 3,  # invented names, answer pools, Q/A blocks, MC distractors
    "order": 4,  # document order in corpus.jsonl
    "train_data": 5,  # block order during training
    "neutral": 6,  # neutral sentences and the held-out split
}


def rng(seed: int, purpose: str) -> np.random.Generator:
    """The seeded generator of one purpose of ``RNG_STREAMS``."""
    return np.random.default_rng([seed, RNG_STREAMS[purpose]])


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

# Imported after the params above: corpus.py imports them from this package.
from routelab.testbed.corpus import (  # noqa: E402
    CORPUS_FILES,
    CROWS_BIAS_TYPE,
    CROWS_COLUMNS,
    DESCRIPTORS,
    HELDOUT_TEMPLATES,
    PROFESSIONS,
    RELATIONS,
    TEMPLATES,
    Corpus,
    build_tokenizer,
    descriptor_pairs,
    generate_corpus,
    load_vocabulary,
    read_design,
    read_records,
    vocabulary,
    words,
    write_corpus,
)

# Why lazy: train.py and truth.py import torch (~1.5 s). Their names load on first use, so the
# corpus half (stage testbed_corpus, the prompts stage's load_vocabulary) runs without torch.
_TORCH_NAMES: dict[str, str] = {
    "model_config": "train",
    "train_from_scratch": "train",
    "save_model": "train",
    "train_and_evaluate": "train",
    "loglik": "truth",
    "ground_truth": "truth",
}

if TYPE_CHECKING:  # the real names for type checkers; at run time __getattr__ loads them
    from routelab.testbed.train import model_config, save_model, train_and_evaluate, train_from_scratch
    from routelab.testbed.truth import ground_truth, loglik


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_TORCH_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CORPUS_FILES", "CROWS_BIAS_TYPE", "CROWS_COLUMNS", "DESCRIPTORS", "HELDOUT_TEMPLATES",
    "PROFESSIONS", "RELATIONS", "RNG_STREAMS", "TEMPLATES", "VARIANTS",
    "Corpus", "CorpusParams", "ModelParams", "TestbedParams", "TrainParams",
    "build_tokenizer", "check_strength", "descriptor_pairs", "generate_corpus", "load_vocabulary",
    "read_design", "read_records", "rng", "strength_for", "vocabulary", "words", "write_corpus",
    *_TORCH_NAMES,
]  # fmt: skip
