"""TruthfulQA multiple choice (Lin et al. 2022): MC1 and MC2 after the 6-shot QA primer.

Context = primer + "\\n\\nQ: {question}\\nA:", continuation " " + choice (lm-eval
truthfulqa_mc1 / truthfulqa_mc2; docs/method.md §8 TruthfulQA). The primer file is used
verbatim except for trailing newlines (the primer is defined without one).
MC1 = 1[the argmax-LL answer among the MC1 choices is the single true one];
MC2 = Σ_true e^LL / Σ_all e^LL over the MC2 choices.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import logsumexp

from routelab.benchmarks.base import (
    BENCHMARK_ROOT,
    Benchmark,
    HubSource,
    Item,
    Metric,
    Row,
    Source,
    hub_rows,
    malformed,
    mean,
    not_utf8,
    read_json,
    require,
)
from routelab.errors import RoutelabError
from routelab.scoring import LL

DEFAULT_PRIMER = BENCHMARK_ROOT / "truthfulqa" / "qa_primer.txt"
EXPECTED = (
    "TruthfulQA mc_task.json: a list of {question, mc1_targets: {answer: 0/1, ...}, "
    "mc2_targets: {answer: 0/1, ...}} (or the Hub's {choices: [...], labels: [...]})"
)


def read_primer(path: str | Path | None = None) -> str:
    """The few-shot QA primer, verbatim except for trailing newlines."""
    p = Path(path) if path is not None else DEFAULT_PRIMER
    if not p.is_file():
        raise RoutelabError(
            f"truthfulqa: primer file {p} not found (expected the 6-shot QA primer text, "
            "'Q: ...\\nA: ...' blocks, no trailing newline). Point bench_baseline.primer "
            "(routelab bench: --primer) at it"
        )
    try:
        return p.read_text(encoding="utf-8").rstrip("\n")
    except UnicodeDecodeError as exc:
        raise not_utf8("truthfulqa", p, exc, "the 6-shot QA primer as UTF-8 text") from None


def _targets(t: Any, path: Path | str, where: str) -> tuple[list[str], list[int]]:
    if isinstance(t, Mapping) and "choices" in t and "labels" in t:  # Hub layout
        choices, labels = [str(c) for c in t["choices"]], [int(x) for x in t["labels"]]
    elif isinstance(t, Mapping):  # mc_task.json layout: {answer: label}
        choices, labels = [str(c) for c in t], [int(x) for x in t.values()]
    else:
        raise malformed("truthfulqa", path, where, "targets are not an object", EXPECTED)
    ok_labels = all(x in (0, 1) for x in labels) and 1 in labels
    if not choices or len(choices) != len(labels) or not ok_labels:
        raise malformed("truthfulqa", path, where, "needs choices with 0/1 labels and at least one 1", EXPECTED)
    return choices, labels


def _item(n: int, row: Mapping[str, Any], primer: str, path: Path | str) -> Item:
    where = f"question {n}"
    require(row, ("question", "mc1_targets", "mc2_targets"), "truthfulqa", path, where, EXPECTED)
    c1, l1 = _targets(row["mc1_targets"], path, f"{where}.mc1_targets")
    c2, l2 = _targets(row["mc2_targets"], path, f"{where}.mc2_targets")
    if sum(l1) != 1:
        raise malformed("truthfulqa", path, f"{where}.mc1_targets", f"{sum(l1)} true answers", "exactly one true MC1 answer")
    return {
        "id": str(n),
        "question": str(row["question"]),
        "context": f"{primer}\n\nQ: {row['question']}\nA:",
        "choices": list(dict.fromkeys(c1 + c2)),  # each distinct answer is scored once
        "mc1_choices": c1,
        "mc1_labels": l1,
        "mc2_choices": c2,
        "mc2_labels": l2,
    }


def load(source: Source, *, primer_path: str | Path | None = None) -> list[Item]:
    """Local ``mc_task.json`` (790 questions) or the Hub's v1 (817)."""
    primer = read_primer(primer_path)
    if isinstance(source, HubSource):
        return [_item(n, r, primer, f"hub:{source.id}") for n, r in enumerate(hub_rows(source, "truthfulqa"))]
    doc = read_json(source, "truthfulqa", EXPECTED)
    if not isinstance(doc, list) or not doc:
        raise malformed("truthfulqa", source, "top level", "not a non-empty list", EXPECTED)
    return [_item(n, r, primer, source) for n, r in enumerate(doc)]


def requests(item: Item) -> list[tuple[str, str]]:
    """Every distinct answer, continuation " " + answer after the item's context."""
    return [(item["context"], " " + c) for c in item["choices"]]


def per_item(item: Item, lls: Sequence[LL]) -> Row:
    by_choice = {c: ll.logprob for c, ll in zip(item["choices"], lls)}
    ll1 = [by_choice[c] for c in item["mc1_choices"]]
    ll2 = [by_choice[c] for c in item["mc2_choices"]]
    true2 = np.array(item["mc2_labels"], dtype=float)  # (C2,) 1 = true answer
    return {
        "id": item["id"],
        "question": item["question"],
        "lls_mc1": ll1,
        "labels_mc1": item["mc1_labels"],
        "lls_mc2": ll2,
        "labels_mc2": item["mc2_labels"],
        "mc1": int(item["mc1_labels"][int(np.argmax(ll1))] == 1),
        # Σ_true e^LL / Σ_all e^LL, in log space: LLs of long answers underflow exp()
        "mc2": math.exp(logsumexp(ll2, b=true2) - logsumexp(ll2)),
    }


BENCHMARK = Benchmark(
    name="truthfulqa",
    description="TruthfulQA multiple choice, 6-shot QA primer; MC1, MC2",
    output="loglikelihood",
    load=load,
    requests=requests,
    per_item=per_item,
    metrics={"mc1": Metric(("mc1",), mean), "mc2": Metric(("mc2",), mean)},
    headline=("mc1", "mc2"),
    summary="mc1",
    default_path=BENCHMARK_ROOT / "truthfulqa" / "mc_task.json",
    hub=HubSource("truthfulqa/truthful_qa", "multiple_choice", "validation"),
    stratify_key=None,  # mc_task.json carries no category
    needs_primer=True,
    short="tqa",
)
