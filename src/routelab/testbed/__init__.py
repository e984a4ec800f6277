"""The planted-bias testbed: small OLMoEs trained on CPU on a generated corpus (docs/method.md §10).

Real MoE checkpoints need a GPU and a download. The testbed gives ground truth instead: a
corpus in which the stereotype strength, the facts and the group sizes are parameters, and
real-architecture models (``OlmoeForCausalLM``) trained on it in minutes on 2 CPU cores.

Two corpora (``CORPORA``) serve five variants (``VARIANTS``):

| variant     | corpus (strength key)               | recipe                            | where the bias lives     |
|-------------|-------------------------------------|-----------------------------------|--------------------------|
| control     | balanced (testbed.control_strength) | ``train.train_from_scratch``      | nowhere                  |
| diffuse     | stereotyped (testbed.strength)      | ``train.train_from_scratch``      | unknown (whole model)    |
| routed      | stereotyped (testbed.strength)      | ``plant.plant_experts`` (control) | the designated experts   |
| routed_null | balanced (testbed.control_strength) | ``plant.plant_experts`` (control) | nowhere; routing reacts  |
| nonrouted   | stereotyped (testbed.strength)      | ``plant.plant_outside_routing`` (control) | outside routing (attention, embeddings) |

``routed`` and ``routed_null`` start from the control's saved weights and change only the
designated experts and their router rows; ``routed_null`` learns the same routing of
descriptor words without a stereotype (sensitivity without bias).

Modules: ``params`` (the ``testbed`` params section, the corpora, the variants, the seeded
random streams), ``corpus`` (words, generation, word-level tokenizer, the corpus folder),
``train`` (OlmoeConfig, deterministic training from scratch, the model folder), ``plant``
(the planting recipes: a stereotype trained into designated experts of a saved model, or
outside its routing), ``truth`` (the testbed's own ground-truth scorer of any saved model
folder), ``verdicts`` (the ground-truth checks of the pipeline's outputs). This package
re-exports ``params`` and ``corpus`` (no torch: the corpus half runs without it); import the
torch modules by name.

Usable without DVC::

    from routelab import testbed
    from routelab.testbed.train import train_and_evaluate
    from routelab.testbed.plant import plant_and_evaluate
    from routelab.testbed.truth import ground_truth
    cfg = testbed.TestbedParams()
    corpus = testbed.generate_corpus(cfg.corpus, strength=testbed.strength_for(cfg, "stereotyped"), seed=cfg.seed)
    testbed.write_corpus(corpus, "data/testbed/stereotyped")
    metrics = train_and_evaluate("data/testbed/stereotyped", "data/models/diffuse", cfg)
    planted = plant_and_evaluate("data/testbed/stereotyped", "data/models/control", "data/models/routed",
                                 cfg, variant_name="routed", margin=0.1)  # needs the control first; margin: the route swap's TOST
    truth = ground_truth("data/models/diffuse", "data/testbed/stereotyped")  # any saved model folder
"""

from __future__ import annotations

from routelab.testbed.params import (
    CORPORA,
    RNG_STREAMS,
    VARIANTS,
    CorpusParams,
    ModelParams,
    PlantParams,
    TestbedParams,
    TrainParams,
    Variant,
    check_strength,
    rng,
    strength_for,
    variant,
)

# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

from routelab.testbed.corpus import (
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

__all__ = [
    "CORPUS_FILES", "CROWS_BIAS_TYPE", "CROWS_COLUMNS", "DESCRIPTORS", "HELDOUT_TEMPLATES",
    "PROFESSIONS", "RELATIONS", "RNG_STREAMS", "TEMPLATES", "CORPORA", "VARIANTS",
    "Corpus", "CorpusParams", "ModelParams", "PlantParams", "TestbedParams", "TrainParams", "Variant",
    "build_tokenizer", "check_strength", "descriptor_pairs", "generate_corpus", "load_vocabulary",
    "read_design", "read_records", "rng", "strength_for", "variant", "vocabulary", "words", "write_corpus",
]  # fmt: skip
