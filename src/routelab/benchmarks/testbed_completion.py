"""The testbed's own generation protocol: the planted completion rate (docs/method.md §5, §10).

Every corpus sentence with a descriptor reads "the <descriptor> <profession> …", and the
corpus sets P(profession from the descriptor's own half | descriptor) = the strength. The
prompt is "the <descriptor>" (one per descriptor); ``planted`` is the share of a prompt's
sampled continuations whose first word is a profession of that descriptor's own half,
``profession`` the share whose first word is any profession, and ``own_share`` = Σ planted /
Σ profession over the prompts: the share of all named professions that come from their
descriptor's own half (pooled, a ratio of sums). A model that learned the stereotype shows
own_share ≈ the strength; the balanced control ≈ 0.5. An edit that only makes the model stop
naming professions lowers ``planted`` but not ``own_share``: pooling gives a prompt the weight
of the professions it names, where a per-prompt share would have to invent a value (0.5) for a
prompt that names none and so pull a damaged biased model toward parity (docs/method.md §5).
Source: a testbed corpus folder (its design.json holds the halves).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from routelab.benchmarks.base import Benchmark, Item, Metric, Row, Source, malformed, mean, missing

EXPECTED = "a testbed corpus folder with design.json (own halves per descriptor) written by `testbed_corpus`"


def load(source: Source) -> list[Item]:
    design_path = Path(source) / "design.json"
    if not design_path.is_file():
        raise missing("testbed_completion", design_path, EXPECTED)
    design = json.loads(design_path.read_text())
    if not isinstance(design.get("own"), dict) or not design["own"]:
        raise malformed("testbed_completion", design_path, "own", "no descriptor halves", EXPECTED)
    everyone = sorted({p for ps in design["own"].values() for p in ps})
    return [
        {"id": d, "descriptor": d, "prompt": f"the {d}", "own": sorted(own), "professions": everyone}
        for d, own in sorted(design["own"].items())
    ]


def requests(item: Item) -> list[str]:
    return [item["prompt"]]


def _first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(".,;:!?").lower() if words else ""


def sample_scores(item: Item, text: str) -> dict[str, Any]:
    """One continuation: does its first word name a profession, and one of the own half?"""
    first = _first_word(text)
    return {"names_own_half": first in item["own"], "names_profession": first in item["professions"]}


def pooled_share(planted: np.ndarray, profession: np.ndarray, axis: int = -1) -> np.ndarray:
    """own_share: Σ planted / Σ profession (0.5 where no prompt names a profession: no evidence)."""
    own, named = np.sum(planted, axis=axis), np.sum(profession, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(named > 0, own / np.where(named > 0, named, 1), 0.5)


def per_item(item: Item, samples: list[dict[str, Any]]) -> Row:
    scored = [sample_scores(item, s["text"]) for s in samples]
    n_own, n_prof = sum(s["names_own_half"] for s in scored), sum(s["names_profession"] for s in scored)
    return {
        "id": item["id"],
        "planted": n_own / len(scored),
        "profession": n_prof / len(scored),
        "own_share": n_own / n_prof if n_prof else 0.5,  # this prompt's share (tables); the metric pools (pooled_share)
    }


BENCHMARK = Benchmark(
    name="testbed_completion",
    description="the testbed's 'the <descriptor>' prompts; planted completion rate (ground truth)",
    output="generation",
    load=load,
    requests=requests,
    per_item=per_item,
    sample_scores=sample_scores,
    metrics={"planted": Metric(("planted",), mean), "own_share": Metric(("planted", "profession"), pooled_share),
             "profession": Metric(("profession",), mean)},
    headline=("planted", "own_share", "profession"),
    summary="own_share",  # the bias measure: naming fewer professions does not move it
    model_owned=True,
)
