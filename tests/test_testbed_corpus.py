"""Tests for routelab.testbed.corpus: corpus statistics, benchmark formats, tokenizer, the corpus folder."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from transformers import AutoTokenizer

from routelab import testbed as tb
from routelab.errors import RoutelabError
from routelab.vocab import AXES

ROOT = Path(__file__).resolve().parents[1]
REAL_CROWS = ROOT.parent / "shared" / "benchmarks" / "crows_pairs" / "crows_pairs_anonymized.csv"
REAL_MC = ROOT.parent / "shared" / "benchmarks" / "truthfulqa" / "mc_task.json"


@pytest.fixture(scope="module")
def corpus08() -> tb.Corpus:
    return tb.generate_corpus(tb.CorpusParams(), strength=0.8, seed=0)


@pytest.fixture(scope="module")
def corpus05() -> tb.Corpus:
    return tb.generate_corpus(tb.CorpusParams(), strength=0.5, seed=0)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory, corpus08: tb.Corpus) -> Path:
    d = tmp_path_factory.mktemp("tb") / "stereotyped"
    tb.write_corpus(corpus08, d)
    return d


# ---------------------------------------------------------------------------- vocabulary


def test_vocabulary_sizes_and_words() -> None:
    v = tb.vocabulary()
    assert tuple(v.axes) == AXES
    assert all(len(ds) >= 2 and len(ds) % 2 == 0 for ds in v.axes.values())
    descriptors = [d for ds in v.axes.values() for d in ds]
    assert len(descriptors) == len(set(descriptors)) == 24
    assert all(d.isalpha() and d.islower() for d in descriptors)  # single lowercase words
    assert len(v.professions) == 40 and len(set(v.professions)) == 40
    assert len(v.templates) == 16 and all(t.startswith("the {person} ") for t in v.templates)
    assert not set(descriptors) & set(v.professions)


def test_vocabulary_is_exactly_the_corpus_words(corpus08: tb.Corpus, corpus_dir: Path) -> None:
    v = tb.vocabulary()
    demo = [r for r in corpus08.records if r["kind"] == "demographic"]
    assert {r["descriptor"] for r in demo} == {d for ds in v.axes.values() for d in ds}
    assert {r["profession"] for r in demo} == set(v.professions)
    texts = {r["text"] for r in corpus08.records}
    assert {r["template"] for r in demo} == set(range(len(v.templates)))
    # every (template, descriptor) prompt the FARE prompt set can build is tokenised without <unk>
    tok = tb.build_tokenizer(list(texts))
    prompts = [t.replace("{person}", v.person(p, d)) for t in v.templates for p in v.professions[:3]
               for d in ("female", "hispanic", "conservative")]  # fmt: skip
    assert tok.unk_token_id not in {i for ids in tok(prompts)["input_ids"] for i in ids}
    assert tb.load_vocabulary(corpus_dir) == v


# ---------------------------------------------------------------------------- corpus statistics


@pytest.mark.parametrize("strength", [0.8, 0.5])
def test_planted_strength_and_balance(strength: float, corpus08: tb.Corpus, corpus05: tb.Corpus) -> None:
    c = corpus08 if strength == 0.8 else corpus05
    n = tb.CorpusParams().sentences_per_descriptor
    per_desc: Counter[str] = Counter()
    own_hits: Counter[str] = Counter()
    pair_prof: Counter[tuple[str, str]] = Counter()
    partner = {a: b for _, a, b in tb.descriptor_pairs()} | {b: a for _, a, b in tb.descriptor_pairs()}
    for r in c.records:
        if r["kind"] != "demographic":
            continue
        w = tb.words(r["text"])  # parse the text itself, not only the metadata
        d, p = w[1], w[2]
        assert (w[0], d, p) == ("the", r["descriptor"], r["profession"])
        per_desc[d] += 1
        own_hits[d] += p in c.own[d]
        pair_prof[(min(d, partner[d]), p)] += 1
    assert set(per_desc.values()) == {n}  # every descriptor equally frequent
    tol = 3 * math.sqrt(strength * (1 - strength) / n)  # binomial tolerance
    for d in per_desc:
        rate = own_hits[d] / n
        assert abs(rate - strength) <= tol, (d, rate, strength)
        assert own_hits[d] == round(strength * n)  # the design is exact, not sampled
        assert len(c.own[d]) == 20 and set(c.own[d]).isdisjoint(c.own[partner[d]])
    # within a pair every profession is equally frequent: only the association differs
    assert set(pair_prof.values()) == {n * 2 // 40}
    # the pooled own-rate over all descriptors (24 x n draws) within binomial tolerance too
    pooled = sum(own_hits.values()) / sum(per_desc.values())
    assert abs(pooled - strength) <= 3 * math.sqrt(max(strength * (1 - strength), 1e-9) / (24 * n)) + 1e-12


def test_neutral_sentences_balanced_and_without_descriptors(corpus08: tb.Corpus) -> None:
    descriptors = {d for ds in tb.DESCRIPTORS.values() for d in ds}
    neutral = [r for r in corpus08.records if r["kind"] == "neutral"]
    assert len(neutral) == tb.CorpusParams().neutral_sentences
    assert all(tb.words(r["text"])[1] == r["profession"] for r in neutral)
    assert not any(set(tb.words(r["text"])) & descriptors for r in neutral)
    assert set(Counter(r["profession"] for r in neutral).values()) == {25}
    held = set(corpus08.heldout)
    assert len(held) == 40 * 4 and not held & {r["text"] for r in neutral}


def test_facts_present_and_qa_shape(corpus08: tb.Corpus) -> None:
    mc_facts = [f for f in corpus08.facts if f["use"] == "mc"]
    assert len(mc_facts) >= 100 and len(corpus08.mc) == len(mc_facts)
    statements = Counter(r["text"] for r in corpus08.records if r["kind"] == "fact")
    qa = "\n\n".join(r["text"] for r in corpus08.records if r["kind"] == "qa")
    p = tb.CorpusParams()
    for f in corpus08.facts:
        want = (p.statement_repeats, p.qa_repeats) if f["tier"] == "common" else (p.rare_statement_repeats, p.rare_qa_repeats)
        assert (statements[f["answer"]], qa.count(f"Q: {f['question']}\nA: {f['answer']}")) == want
    # the rare tier: the facts of the first rare_entities MC entities, both relations
    rare = [f for f in corpus08.facts if f["tier"] == "rare"]
    assert len(rare) == p.rare_entities * 2 and all(f["use"] == "mc" for f in rare)
    assert [f["entity"] for f in rare[::2]] == [f["entity"] for f in mc_facts[: 2 * p.rare_entities : 2]]
    # entity -> value is a function
    assert len({(f["entity"], f["relation"]) for f in corpus08.facts}) == len(corpus08.facts)
    # the primer: qa_shots shots in TruthfulQA's shape, no trailing newline, none of them scored
    shots = corpus08.primer.split("\n\n")
    assert len(shots) == p.qa_shots == 2 and not corpus08.primer.endswith("\n")
    assert all(s.startswith("Q: ") and "?\nA: " in s and s.endswith(".") for s in shots)
    mc_questions = {m["question"] for m in corpus08.mc}
    assert not any(s.split("\n")[0][3:] in mc_questions for s in shots)


def test_corpus_deterministic_for_a_seed(corpus08: tb.Corpus) -> None:
    again = tb.generate_corpus(tb.CorpusParams(), strength=0.8, seed=0)
    assert again.records == corpus08.records and again.crows == corpus08.crows and again.mc == corpus08.mc
    other = tb.generate_corpus(tb.CorpusParams(), strength=0.8, seed=1)
    assert other.records != corpus08.records


def test_control_shares_the_design(corpus08: tb.Corpus, corpus05: tb.Corpus) -> None:
    assert corpus05.own == corpus08.own and corpus05.facts == corpus08.facts
    assert corpus05.crows == corpus08.crows and corpus05.mc == corpus08.mc
    assert corpus05.heldout == corpus08.heldout and corpus05.primer == corpus08.primer


# ---------------------------------------------------------------------------- benchmark files


def test_crows_csv_has_the_real_columns_and_minimal_pairs(corpus08: tb.Corpus, corpus_dir: Path) -> None:
    path = corpus_dir / tb.CORPUS_FILES["crows"]
    df = pl.read_csv(path)
    real = pl.read_csv(REAL_CROWS, n_rows=2)
    assert df.columns == real.columns + ["cluster"] == list(tb.CROWS_COLUMNS)  # the real columns + the unit
    assert df.drop("cluster").dtypes == real.dtypes
    # a cluster is one (descriptor pair, profession) unit: crows_frames_per_unit pairs, one bias type, one profession
    units = df.group_by("cluster").agg(pl.len(), pl.col("bias_type").n_unique().alias("types"))
    assert set(units["len"]) == {tb.CorpusParams().crows_frames_per_unit} and set(units["types"]) == {1}
    assert df[""].to_list() == list(range(len(df)))
    n = len(df)
    assert n >= 600 and math.sqrt(0.25 / n) < 0.02  # binomial SE at 0.5
    assert Counter(df["stereo_antistereo"]) == {"stereo": n // 2, "antistereo": n // 2}
    assert set(df["bias_type"]) == set(tb.CROWS_BIAS_TYPE.values())
    pairs = {(a, b) for _, a, b in tb.descriptor_pairs()}
    corpus_texts = {r["text"] for r in corpus08.records}
    more_count: Counter[str] = Counter()
    with path.open(newline="") as fh:  # the csv module (as the project's loader) reads the same
        rows = list(csv.DictReader(fh))
    assert [r["sent_more"] for r in rows] == df["sent_more"].to_list()
    for r in rows:
        wm, wl = tb.words(r["sent_more"]), tb.words(r["sent_less"])
        assert len(wm) == len(wl)  # every pair is length-matched
        diff = [i for i, (x, y) in enumerate(zip(wm, wl)) if x != y]
        assert diff == [1], r  # they differ by exactly the descriptor
        more, less, prof = wm[1], wl[1], wm[2]
        assert prof in corpus08.own[more]  # sent_more is the stereotypical sentence
        first = (more, less) in pairs
        assert first or (less, more) in pairs
        assert r["stereo_antistereo"] == ("stereo" if first else "antistereo")
        assert eval(r["annotations"]) == [[r["bias_type"]]] * 5  # noqa: S307 (our own literal)
        assert r["sent_more"] not in corpus_texts and r["sent_less"] not in corpus_texts  # held-out frames
        more_count[more] += 1
    assert len(set(more_count.values())) == 1  # descriptors balanced in sent_more


def test_mc_task_matches_truthfulqa_format(corpus_dir: Path) -> None:
    mine = json.loads((corpus_dir / tb.CORPUS_FILES["mc"]).read_text())
    real = json.loads(REAL_MC.read_text())
    assert isinstance(mine, list) and set(mine[0]) == set(real[0])
    for item in mine:
        assert item["question"].endswith("?")
        for key in ("mc0_targets", "mc1_targets", "mc2_targets"):
            labels = list(item[key].values())
            assert labels[0] == 1 and sum(labels) == 1 and set(labels) == {0, 1}
        assert len(item["mc1_targets"]) == tb.CorpusParams().mc_choices
        lengths = {len(tb.words(c)) for c in item["mc1_targets"]}
        assert len(lengths) == 1  # choices differ only in the value word
    primer = (corpus_dir / tb.CORPUS_FILES["primer"]).read_text()
    assert primer.count("Q: ") == tb.CorpusParams().qa_shots and not primer.endswith("\n")


def test_heldout_text_one_sentence_per_line(corpus_dir: Path) -> None:
    lines = (corpus_dir / tb.CORPUS_FILES["heldout"]).read_text().splitlines()
    assert len(lines) == 160 and all(x.startswith("the ") and x.endswith(".") for x in lines)
    counts = tb.read_design(corpus_dir)["counts"]
    assert counts["n_crows_length_matched"] == counts["n_crows_pairs"] == 1440


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_bos_and_reload(corpus_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(corpus_dir / "tokenizer")
    s = "the female doctor carefully examined the patient."
    ids = tok(s)["input_ids"]
    assert ids[0] == tok.bos_token_id == 1 and len(ids) == len(tb.words(s)) + 1
    assert tok(s, add_special_tokens=False)["input_ids"] == ids[1:]
    assert tok.decode(ids[1:]) == " ".join(tb.words(s)) == "the female doctor carefully examined the patient ."
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 2, 3)
    assert tok("the zzzz")["input_ids"][-1] == tok.unk_token_id
    q = "Q: what is the capital of x?\nA:"
    assert tb.words(q) == ["Q", ":", "what", "is", "the", "capital", "of", "x", "?", "A", ":"]


def test_every_benchmark_word_is_in_the_vocabulary(corpus08: tb.Corpus, corpus_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(corpus_dir / "tokenizer")
    texts = [corpus08.primer] + corpus08.heldout + [r["sent_less"] for r in corpus08.crows]
    texts += [c for m in corpus08.mc for c in m["mc1_targets"]]
    assert tok.unk_token_id not in {i for ids in tok(texts)["input_ids"] for i in ids}


# ---------------------------------------------------------------------------- bad input


def test_bad_corpus_input_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(RoutelabError, match=r"strength = -0.1 is outside"):
        tb.generate_corpus(tb.CorpusParams(), strength=-0.1, seed=0)
    with pytest.raises(RoutelabError, match="n_professions = 41"):
        tb.vocabulary(tb.CorpusParams(n_professions=41))
    with pytest.raises(RoutelabError, match=r"testbed.corpus.rare_entities = 65: need 0 <= rare_entities <= n_entities \(64\)"):
        tb.generate_corpus(tb.CorpusParams(rare_entities=65), strength=0.5, seed=0)
    with pytest.raises(RoutelabError, match=r"rare_statement_repeats \+ rare_qa_repeats >= 1"):
        tb.generate_corpus(tb.CorpusParams(rare_statement_repeats=0), strength=0.5, seed=0)
    with pytest.raises(RoutelabError, match=r"missing corpus.jsonl.*--name <stereotyped\|balanced>"):
        tb.read_design(tmp_path / "nope")
    with pytest.raises(RoutelabError, match="vocabulary.json not found"):
        tb.load_vocabulary(tmp_path / "nope")


# ---------------------------------------------------------------------------- the folder


def test_corpus_folder_counts_and_bytes_are_reproducible(corpus08: tb.Corpus, corpus_dir: Path, tmp_path: Path) -> None:
    counts = tb.read_design(corpus_dir)["counts"]
    # the numbers of data/testbed/stereotyped (params.yaml defaults, seed 0)
    assert (counts["n_records"], counts["n_tokens"], counts["vocab_size"]) == (11480, 129070, 215)
    common, rare = (64 - 40 + 1) * 2, 40 * 2  # (common MC entities + 1 primer entity) x relations, rare x relations
    assert counts["n_facts"] == common + rare == 130
    assert counts["by_kind"] == {"demographic": 24 * 400, "neutral": 1000, "fact": common * 8 + rare * 1,
                                 "qa": math.ceil(common * 24 / 3)}  # fmt: skip  (qa_repeats in blocks of qa_shots + 1)
    assert len(tb.read_records(corpus_dir)) == 11480
    again = tmp_path / "again"
    tb.write_corpus(corpus08, again)
    files = sorted(p.relative_to(corpus_dir) for p in corpus_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((corpus_dir / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert (corpus_dir / "vocabulary.json").read_text().endswith("]\n}\n")  # sorted keys, trailing newline
