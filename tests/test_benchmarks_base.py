"""routelab.benchmarks.base: the loader error kit and Hub rows; helpers the other benchmark
tests import (``L``, ``FakeHub``, paths).

Run: .venv/bin/pytest tests/test_benchmarks_base.py
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import datasets
import pytest

from routelab.benchmarks import HubSource, get_benchmark, load_items
from routelab.benchmarks.base import hub_rows, missing
from routelab.cli import build_parser
from routelab.errors import RoutelabError
from routelab.bench_baseline import BenchBaselineParams
from routelab.models import ModelSpec
from routelab.scoring import LL

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "../shared/benchmarks"  # the real files, relative to the project root
FIXTURES = Path(__file__).parent / "fixtures"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def L(logprob: float, n: int = 1) -> LL:
    """An LL of ``n`` tokens (ids 0..n-1, equal shares of ``logprob``): token-level, as the CrowS
    decomposition needs; two such sentences of one length share every token (nothing after a difference)."""
    return LL(logprob, n, False, tuple([logprob / n] * n), tuple(range(n)))


class FakeHub:
    """Stands in for datasets.load_dataset with the Hub's column layouts."""

    def __init__(self, tables):
        self.tables, self.calls = tables, []

    def __call__(self, path, name=None, split=None, revision=None):
        self.calls.append((path, name, split, revision))
        rows, features = self.tables[(path, name)]
        return datasets.Dataset.from_list(rows, features=features)


def offline(*args, **kwargs):
    raise ConnectionError("no network")


def _bench_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices["bench"]._option_string_actions)


def assert_hint_names_real_options(msg: str) -> None:
    """Every params key and CLI flag a hint names exists (bench_baseline.*, models.<name>.*, --x)."""
    fields = {f.name for f in dataclasses.fields(BenchBaselineParams)}
    for key in re.findall(r"bench_baseline\.(\w+)", msg):
        assert key in fields, f"hint names bench_baseline.{key}, not a key of the section: {msg}"
    for key in re.findall(r"models\.<name>\.(\w+)", msg):
        assert key in {f.name for f in dataclasses.fields(ModelSpec)}, msg
    flags = _bench_flags()
    for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", msg):
        assert flag in flags, f"hint names {flag}, not a flag of `routelab bench`: {msg}"
    assert not re.search(r"\b(data_path|hub|primer_path|hub_source)=", msg), f"names a Python argument: {msg}"


def test_missing_file_hint_names_real_options(tmp_path):
    msg = str(missing("bbq", tmp_path / "Age.jsonl", "BBQ jsonl"))
    assert "Age.jsonl" in msg and "bench_baseline.paths.bbq" in msg and "--data" in msg and "--hub" in msg
    assert "data_path" not in msg and "hub=True" not in msg
    assert_hint_names_real_options(msg)


def test_hub_failure_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RoutelabError) as err:
        load_items(get_benchmark("bbq"), hub=True)
    msg = str(err.value)
    assert re.search(r"oskarvanderwal/bbq.*no network.*bench_baseline\.paths\.bbq", msg)
    assert_hint_names_real_options(msg)


def test_hub_rows_decode_class_labels(monkeypatch):
    features = datasets.Features({"x": datasets.Value("int32"), "label": datasets.ClassLabel(names=["a", "b"])})
    fake = FakeHub({("some/ds", "cfg"): ([{"x": 5, "label": 1}], features)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert hub_rows(HubSource("some/ds", "cfg", "test"), "bbq") == [{"x": 5, "label": "b"}]
    assert fake.calls == [("some/ds", "cfg", "test", None)]
