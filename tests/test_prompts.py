"""routelab.prompts: counts, balance, split by context, token alignment, paper scale."""

from __future__ import annotations


import polars as pl
import pytest

import tiny_models
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.prompts import (
    PromptsParams,
    _token_alignment,
    build_prompts,
    english_vocabulary,
    summary,
)
from routelab.io import write_parquet as write_prompts
from routelab.tables import NEUTRAL, load_prompts
from routelab.vocab import AXES, Vocabulary


word_tokenizer = tiny_models.text_tokenizer


def all_texts(vocab: Vocabulary) -> list[str]:
    df = build_prompts(vocab, None, PromptsParams())
    return df["text"].to_list()


@pytest.fixture(scope="module")
def paper() -> pl.DataFrame:
    return build_prompts(english_vocabulary(), None, PromptsParams(n_demographic=3280))


def test_english_vocabulary_sizes():
    v = english_vocabulary()
    assert len(v.templates) == 24 and len(v.professions) == 24
    assert set(v.axes) == set(AXES)  # all nine axes
    assert sum(len(d) for d in v.axes.values()) == 40


def test_paper_scale_counts(paper):
    s = summary(paper)
    assert s["n_contexts"] == 576 and s["n_neutral"] == 576  # 24 templates x 24 professions
    assert s["n_demographic"] == 3280
    assert s["n_groups"] == 40
    # balanced over groups: 3,280 / 40 = 82 prompts per descriptor
    assert paper.filter(pl.col("group") != NEUTRAL).group_by("group").len()["len"].unique().to_list() == [82]
    # balanced over contexts: 3,280 = 576 x 5 + 400 -> 400 contexts with 6 variants, 176 with 5
    per_ctx = paper.filter(pl.col("group") != NEUTRAL).group_by("context_id").len()["len"]
    assert per_ctx.value_counts().sort("len").rows() == [(5, 176), (6, 400)]


def test_no_descriptor_twice_in_a_context(paper):
    demo = paper.filter(pl.col("group") != NEUTRAL)
    assert demo.select("context_id", "group").is_duplicated().sum() == 0


def test_one_neutral_per_context(paper):
    neu = paper.filter(pl.col("group") == NEUTRAL)
    assert neu["context_id"].n_unique() == neu.height == 576
    assert neu["axis"].null_count() == neu.height


def test_split_by_context(paper):
    per_ctx = paper.group_by("context_id").agg(pl.col("split").n_unique())
    assert per_ctx["split"].max() == 1  # no context straddles splits
    test_ctx = paper.filter(pl.col("split") == "test")["context_id"].n_unique()
    assert test_ctx == round(0.2 * 576)


def test_full_product_and_cap():
    df = build_prompts(english_vocabulary(), None, PromptsParams())
    assert summary(df)["n_demographic"] == 576 * 40
    with pytest.raises(RoutelabError, match="n_demographic"):
        build_prompts(english_vocabulary(), None, PromptsParams(n_demographic=576 * 40 + 1))


def test_seeded():
    a = build_prompts(english_vocabulary(), None, PromptsParams(n_demographic=100, seed=3))
    b = build_prompts(english_vocabulary(), None, PromptsParams(n_demographic=100, seed=3))
    c = build_prompts(english_vocabulary(), None, PromptsParams(n_demographic=100, seed=4))
    assert a.equals(b)
    assert not a.equals(c)


def test_texts_and_char_spans():
    df = build_prompts(english_vocabulary(), None, PromptsParams(n_templates=1, n_professions=1))
    texts = set(df["text"].to_list())
    assert "The doctor carefully examined the patient." in texts
    assert "The female doctor carefully examined the patient." in texts
    for r in df.iter_rows(named=True):
        assert r["text"][r["prof_char_start"] :].startswith(r["profession"])
        if r["group"] != NEUTRAL:
            assert r["text"][r["desc_char_start"] : r["desc_char_end"]] == r["group"]
    assert df.filter(pl.col("group") == "female")["prompt_id"].item() == "t00p00-gender-female"


def test_token_alignment_known_answers():
    assert _token_alignment([1, 2, 3, 4], [1, 9, 2, 3, 4]) == (1, 2, True)  # one token inserted
    assert _token_alignment([1, 2, 3, 4], [1, 9, 8, 2, 3, 4]) == (1, 3, False)  # two tokens
    assert _token_alignment([1, 2, 3, 4], [1, 9, 8, 3, 4]) == (1, 3, False)  # neighbour retokenised


def test_tokenizer_columns_and_length_matched():
    vocab = english_vocabulary()
    tok = word_tokenizer(all_texts(Vocabulary(vocab.axes, vocab.professions[:2], vocab.templates[:2])))
    df = build_prompts(vocab, tok, PromptsParams(n_templates=2, n_professions=2))
    neu = df.filter(pl.col("prompt_id") == "t00p00-neutral").row(0, named=True)
    # [BOS] The doctor carefully examined the patient .
    assert neu["n_tokens"] == 8 and neu["length_matched"] is True
    fem = df.filter(pl.col("prompt_id") == "t00p00-gender-female").row(0, named=True)
    assert (fem["n_tokens"], fem["n_descriptor_tokens"], fem["desc_start"], fem["desc_end"]) == (9, 1, 2, 3)
    assert fem["length_matched"] is True
    mid = df.filter(pl.col("prompt_id") == "t00p00-age-middle_aged").row(0, named=True)
    assert (mid["n_descriptor_tokens"], mid["desc_start"], mid["desc_end"]) == (3, 2, 5)  # middle - aged
    assert mid["length_matched"] is False
    ids = tok(fem["text"])["input_ids"]
    assert tok.decode(ids[fem["desc_start"] : fem["desc_end"]]) == "female"


def test_length_matched_only_filters_descriptors_before_sampling():
    vocab = english_vocabulary()
    tok = word_tokenizer(all_texts(vocab))
    df = build_prompts(vocab, tok, PromptsParams(n_demographic=3280, length_matched_only=True))
    groups = set(df["group"].to_list())
    assert "middle-aged" not in groups and "working-class" not in groups
    assert summary(df)["n_demographic"] == 3280  # the count is kept
    assert df["length_matched"].all()
    with pytest.raises(RoutelabError, match="needs a tokenizer"):
        build_prompts(vocab, None, PromptsParams(length_matched_only=True))


def test_params_section_and_validation():
    cfg = section(PromptsParams, {"n_demographic": 3280, "seed": 1, "test_fraction": 0.25}, "prompts")
    assert cfg.n_demographic == 3280 and cfg.test_fraction == 0.25
    with pytest.raises(RoutelabError, match="Did you mean 'n_demographic'"):
        section(PromptsParams, {"n_demographics": 3280}, "prompts")
    with pytest.raises(RoutelabError, match="test_fraction"):
        PromptsParams(test_fraction=1.0)


def test_duplicate_descriptor_across_axes_is_an_error():
    v = Vocabulary(axes={"race": ("Indian",), "nationality": ("Indian",)}, professions=("doctor",),
                   templates=("The {person} slept.",))  # fmt: skip
    with pytest.raises(RoutelabError, match="Indian"):
        build_prompts(v, None, PromptsParams())


def test_write_and_load_roundtrip(tmp_path, paper):
    path = tmp_path / "prompts.parquet"
    write_prompts(paper, path)
    assert load_prompts(path).equals(paper)
    with pytest.raises(RoutelabError, match="lacks columns"):
        load_prompts(paper.drop("split"))
    with pytest.raises(RoutelabError, match="not found"):
        load_prompts(tmp_path / "missing.parquet")
