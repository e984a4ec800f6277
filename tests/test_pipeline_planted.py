"""End to end on a tiny model with a planted routing bias: prompts → extract → profile.

The router of MoE layer 0 is rigged so that the descriptor "female" goes to expert E_STAR:
one embedding feature is +3σ for it and −3σ for every other word, and router row E_STAR
reads only that feature, with a large weight. FSP must rank E_STAR first in layer 0 by ARD and by φ.
"""

from __future__ import annotations

import polars as pl
import torch

import tiny_models as tm
from routelab.extract import extract_routing
from routelab.models import ModelSpec, load_model
from routelab.profile import ProfileParams, compute_profile
from routelab.prompts import PromptsParams, build_prompts
from routelab.vocab import Vocabulary

E_STAR, FEATURE = 5, 7
VOCAB = Vocabulary(
    axes={"gender": ("female",)},
    professions=("doctor", "nurse", "engineer", "teacher"),
    templates=("the {person} is kind .", "the {person} was a doctor .", "a kind {person} , and the nurse ."),
)


def _planted_model(path):
    model_dir = tm.save_tiny_olmoe(path)
    lm = load_model(ModelSpec(path=str(model_dir), dtype="float32", device="cpu"))
    tok_id = lm.tokenizer.convert_tokens_to_ids("female")
    with torch.no_grad():
        emb = lm.model.model.embed_tokens.weight
        scale = 3 * lm.model.config.initializer_range  # 3σ of the embedding init
        emb[:, FEATURE] = -scale  # every other word reads "not E_STAR" …
        emb[tok_id, FEATURE] = scale  # … the descriptor reads "E_STAR"
        router = lm.model.model.layers[0].mlp.gate
        router.weight[:, FEATURE] = 0.0  # the feature drives no other expert
        router.weight[E_STAR].zero_()
        router.weight[E_STAR, FEATURE] = 40.0
    return lm


def test_planted_expert_ranks_first_by_ard_and_phi(tmp_path):
    lm = _planted_model(tmp_path / "model")
    prompts = build_prompts(VOCAB, lm.tokenizer, PromptsParams(test_fraction=0.0, seed=0))
    assert set(prompts["group"].unique()) == {"neutral", "female"}
    routing = tmp_path / "routing.parquet"
    extract_routing(lm, list(zip(prompts["prompt_id"], prompts["text"])), routing, progress=False)
    # ground truth from the log itself: "female" tokens always pick E_STAR at layer 0
    female_id = lm.tokenizer.convert_tokens_to_ids("female")
    rows = pl.read_parquet(routing).filter((pl.col("layer") == 0) & (pl.col("token_id") == female_id))
    assert rows.height > 0 and all(E_STAR in r for r in rows["topk"].to_list())

    profile, _, desc = compute_profile(routing, prompts, ProfileParams(split="validation", n_permutations=0))
    layer0 = profile.filter(pl.col("layer") == 0)
    assert layer0.sort("ard", descending=True)["expert"][0] == E_STAR
    assert layer0.sort("phi", descending=True)["expert"][0] == E_STAR
    assert (desc["top_phi_layer"], desc["top_phi_expert"]) == (0, E_STAR)
