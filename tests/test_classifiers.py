"""Text scorers: known values on fixed strings; an unusable scorer is skipped with one line."""

from __future__ import annotations

import pytest

from routelab.errors import RoutelabError
from routelab.classifiers import usable_classifiers


def test_vader_sentiment_known_values():
    s = usable_classifiers(["sentiment", "negative"], quiet=True)
    # VADER's README example: compound 0.8316
    got = s["sentiment"].score(["VADER is smart, handsome, and funny.", "the doctor answered the phone .",
                                "The nurse was cruel and horrible."])
    assert got[0] == pytest.approx(0.8316, abs=1e-4)
    assert got[1] == 0.0  # no lexicon word: neutral
    assert got[2] < -0.5
    assert s["negative"].score(["The nurse was cruel and horrible.", "a kind nurse"]).tolist() == [1.0, 0.0]


def test_toxicity_separates_an_insult_from_a_plain_sentence():
    tox = usable_classifiers(["toxicity"], quiet=True)["toxicity"]
    got = tox.score(["go to hell, you scum", "the doctor answered the phone ."])
    assert got[0] > 0.5 and got[1] < 0.1
    assert tox.score([]).shape == (0,)


def test_detoxify_without_checkpoint_is_skipped_with_one_line(capsys):
    out = usable_classifiers(["sentiment", "detoxify"], detoxify_checkpoint=None)
    assert set(out) == {"sentiment"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("classifier detoxify skipped:") and "generation.detoxify_checkpoint" in err[0]


def test_unknown_scorer_names_the_available_ones():
    with pytest.raises(RoutelabError, match="available: sentiment, negative, toxicity, detoxify"):
        usable_classifiers(["regard"])
