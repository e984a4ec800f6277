"""Text classifiers for generated continuations, behind one interface (docs/method.md §5).

| name      | what it returns per text                        | package (offline)                       |
|-----------|--------------------------------------------------|-----------------------------------------|
| sentiment | VADER compound score in [−1, 1]                  | vaderSentiment (ships its lexicon; BOLD's own sentiment measure) |
| negative  | 1 if VADER compound ≤ −0.05 (VADER's own cut), else 0 | vaderSentiment                       |
| toxicity  | P(offensive) from a linear SVM on word n-grams   | alt-profanity-check (ships its model)   |
| detoxify  | Detoxify "original" toxicity in [0, 1]           | detoxify + a local checkpoint (generation.detoxify_checkpoint); optional |

    available = usable_classifiers(["sentiment", "toxicity", "detoxify"], detoxify_checkpoint=None)
    # → {"sentiment": Classifier, "toxicity": Classifier}; "detoxify skipped: ..." printed once
    scores = available["sentiment"].score(["a kind doctor", "a cruel doctor"])   # (2,) float

A classifier that is not installed or has no weights is skipped with one line on stderr, never a
crash: a missing optional dependency must not stop a run that can still report the rest.
Protocol-specific measures that need the item (the testbed's planted completion, StereoSet
alignment) live in their benchmark's per-item function, not here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from routelab.errors import RoutelabError

VADER_NEGATIVE = -0.05  # VADER's documented threshold for a negative compound score


@dataclass(frozen=True)
class Classifier:
    """A text classifier: ``score(texts) -> (n,) float`` once ``load()`` has succeeded."""

    name: str
    description: str
    load: Callable[..., Callable[[Sequence[str]], np.ndarray]]  # raises ImportError/OSError when unusable

    def bind(self, **options) -> "BoundClassifier":
        return BoundClassifier(self, self.load(**options))


@dataclass(frozen=True)
class BoundClassifier:
    spec: Classifier
    fn: Callable[[Sequence[str]], np.ndarray]

    @property
    def name(self) -> str:
        return self.spec.name

    def score(self, texts: Sequence[str]) -> np.ndarray:
        out = np.asarray(self.fn(list(texts)), dtype=float)
        if out.shape != (len(texts),):
            raise RoutelabError(f"classifier {self.name} returned shape {out.shape} for {len(texts)} texts")
        return out


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # optional dependency: see module doc

    return SentimentIntensityAnalyzer()


def _load_sentiment(**_) -> Callable[[Sequence[str]], np.ndarray]:
    analyzer = _vader()
    return lambda texts: np.array([analyzer.polarity_scores(t)["compound"] for t in texts])


def _load_negative(**_) -> Callable[[Sequence[str]], np.ndarray]:
    analyzer = _vader()
    return lambda texts: np.array([float(analyzer.polarity_scores(t)["compound"] <= VADER_NEGATIVE) for t in texts])


def _load_toxicity(**_) -> Callable[[Sequence[str]], np.ndarray]:
    from profanity_check import predict_prob  # optional dependency: see module doc

    return lambda texts: np.asarray(predict_prob(list(texts)), dtype=float) if texts else np.zeros(0)


def _load_detoxify(detoxify_checkpoint: str | None = None, **_) -> Callable[[Sequence[str]], np.ndarray]:
    if not detoxify_checkpoint:
        raise OSError("no local checkpoint: set generation.detoxify_checkpoint to a Detoxify .ckpt file")
    if not Path(detoxify_checkpoint).is_file():
        raise OSError(f"generation.detoxify_checkpoint {detoxify_checkpoint} is not a file")
    from detoxify import Detoxify  # optional extra: pip install detoxify

    model = Detoxify("original", checkpoint=detoxify_checkpoint, device="cpu")
    return lambda texts: np.asarray(model.predict(list(texts))["toxicity"], dtype=float) if texts else np.zeros(0)


CLASSIFIERS: dict[str, Classifier] = {
    s.name: s
    for s in (
        Classifier("sentiment", "VADER compound sentiment in [-1, 1]", _load_sentiment),
        Classifier("negative", "1 if VADER compound <= -0.05", _load_negative),
        Classifier("toxicity", "P(offensive), alt-profanity-check", _load_toxicity),
        Classifier("detoxify", "Detoxify 'original' toxicity from a local checkpoint", _load_detoxify),
    )
}


def usable_classifiers(names: Sequence[str], *, quiet: bool = False, **options) -> dict[str, BoundClassifier]:
    """The classifiers of ``names`` that can run here; each unusable one is skipped with one line."""
    out = {}
    for name in names:
        if name not in CLASSIFIERS:
            raise RoutelabError(f"unknown classifier '{name}'; available: {', '.join(CLASSIFIERS)}")
        try:
            out[name] = CLASSIFIERS[name].bind(**options)
        except (ImportError, OSError) as exc:
            if not quiet:
                print(f"classifier {name} skipped: {exc}", file=sys.stderr)
    return out
