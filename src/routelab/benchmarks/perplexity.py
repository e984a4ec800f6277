"""Token-weighted perplexity of held-out text: exp(−Σ LL / Σ tokens) (docs/method.md §8 Perplexity).

Each passage is scored whole after BOS (routelab.scoring.rolling_loglikelihood: texts longer
than the model's window go in disjoint windows). Local: a text file, one passage per line
(id = line number; blank lines skipped). Default, when no file is given: WikiText-2 raw,
test split, from the Hub: each non-blank line that is not a " = Heading = " line is one
passage, stripped of its surrounding spaces (id = row number in the split). Headings are
dropped because they are titles, not running text.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from routelab.benchmarks.base import (
    Benchmark,
    HubSource,
    Item,
    Metric,
    Row,
    Source,
    hub_rows,
    malformed,
    missing,
    not_utf8,
    total,
)
from routelab.scoring import LL

EXPECTED = "a UTF-8 text file with one passage per line (blank lines are skipped)"
TEXT_FIELD = "text"  # the Hub dataset's text column
HEADING = re.compile(r"^\s*(=+) .* \1\s*$")  # WikiText's " = Title = ", " = = Section = = "


def load(source: Source) -> list[Item]:
    """Passages from a text file (one per line) or from the Hub source's text column."""
    if isinstance(source, HubSource):
        rows = hub_rows(source, "perplexity")
        if rows and TEXT_FIELD not in rows[0]:
            raise malformed("perplexity", f"hub:{source.id}", "row 0", f"no '{TEXT_FIELD}' column", "a text column")
        texts = ((n, str(r[TEXT_FIELD] or "")) for n, r in enumerate(rows))
        return [{"id": str(n), "text": t.strip()} for n, t in texts if t.strip() and not HEADING.match(t)]
    if not source.is_file():
        raise missing("perplexity", source, EXPECTED)
    try:
        with source.open(encoding="utf-8") as fh:
            lines = enumerate(fh, 1)  # id = line number in the file
            items = [{"id": str(n), "text": line.rstrip("\n")} for n, line in lines if line.strip()]
    except UnicodeDecodeError as exc:
        raise not_utf8("perplexity", source, exc, EXPECTED) from None
    if not items:
        raise malformed("perplexity", source, "whole file", "no non-blank lines", EXPECTED)
    return items


def requests(item: Item) -> list[str]:
    return [item["text"]]


def per_item(item: Item, lls: Sequence[LL]) -> Row:
    (ll,) = lls
    return {"id": item["id"], "ll": ll.logprob, "n_tokens": ll.n_tokens}


def _nll_per_token(ll: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
    return -np.sum(ll, axis=axis) / np.sum(n, axis=axis)


def _ppl(ll: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(-np.sum(ll, axis=axis) / np.sum(n, axis=axis))


BENCHMARK = Benchmark(
    name="perplexity",
    description="token-weighted perplexity of held-out text (default: WikiText-2 raw test)",
    output="rolling",
    load=load,
    requests=requests,
    per_item=per_item,
    metrics={
        "n_tokens": Metric(("n_tokens",), total, empty=0),
        "ll_sum": Metric(("ll",), total),
        "nll_per_token": Metric(("ll", "n_tokens"), _nll_per_token),
        "ppl": Metric(("ll", "n_tokens"), _ppl),
    },
    headline=("ppl",),
    summary="ppl",
    default_path=None,  # no local copy in ../shared/benchmarks: the Hub, or bench_baseline.paths.perplexity
    hub=HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),  # the Hub's id of `wikitext`
    short="ppl",
)
