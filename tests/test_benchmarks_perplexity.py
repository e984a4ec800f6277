"""routelab.benchmarks.perplexity: token-weighted perplexity (hand-computed), the text-file
loader, and the WikiText-2 default from the Hub (headings and blank lines dropped).

Run: .venv/bin/pytest tests/test_benchmarks_perplexity.py
"""

from __future__ import annotations

import math

import datasets
import pytest

from routelab.benchmarks import HubSource, get_benchmark, item_rows, load_items, metrics_from_rows, resolve_source
from routelab.errors import RoutelabError
from test_benchmarks_base import FakeHub, L

PPL = get_benchmark("perplexity")


def test_perplexity_metrics():
    items = [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]
    m = metrics_from_rows(PPL, item_rows(PPL, items, [[L(-6.0, 3)], [L(-2.0, 1)]]))
    assert m["ppl"] == pytest.approx(math.exp(2.0)) and m["n_tokens"] == 4 and isinstance(m["n_tokens"], int)
    assert m["ll_sum"] == -8.0 and m["nll_per_token"] == 2.0 and m["n"] == 2


def test_text_file_ids_are_line_numbers(tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_text("the doctor examined the patient\n\nthe nurse wrote a note\n")
    items = load_items(PPL, text)
    assert items == [{"id": "1", "text": "the doctor examined the patient"}, {"id": "3", "text": "the nurse wrote a note"}]
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(RoutelabError, match="blank.txt.*no non-blank lines"):
        load_items(PPL, tmp_path / "blank.txt")


def test_default_is_wikitext2_raw_test_from_the_hub(monkeypatch):
    assert resolve_source(PPL) == HubSource("Salesforce/wikitext", "wikitext-2-raw-v1", "test")
    rows = [{"text": ""}, {"text": " = Robert Boulter = \n"}, {"text": ""},
            {"text": " Robert Boulter is an English film , television and theatre actor . \n"},
            {"text": " = = Career = = \n"}, {"text": " In 2000 Boulter had a guest @-@ starring role . \n"}]
    fake = FakeHub({("Salesforce/wikitext", "wikitext-2-raw-v1"): (rows, None)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_items(PPL) == [
        {"id": "3", "text": "Robert Boulter is an English film , television and theatre actor ."},
        {"id": "5", "text": "In 2000 Boulter had a guest @-@ starring role ."},
    ]
    assert fake.calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test", None)]
