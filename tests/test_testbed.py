"""Tests for routelab.testbed (the package): the params section, the corpora and variants, the random streams.

Full-size ground truth (preference >= 0.70 for diffuse and routed, 0.5 +- 0.05 for control and
routed_null, fact MC1 in [0.6, 0.95]) is measured by the DVC stages testbed_train and testbed_plant
(metrics/<variant>/testbed.json). The modules have their own files: test_testbed_corpus.py,
test_testbed_train.py, test_testbed_plant.py, test_testbed_truth.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from routelab import testbed as tb
from routelab.config import section
from routelab.errors import RoutelabError

ROOT = Path(__file__).resolve().parents[1]


def test_corpora_read_their_own_strength_key_and_variants_name_a_corpus() -> None:
    cfg = tb.TestbedParams(strength=0.7, control_strength=0.45)
    assert {c: tb.strength_for(cfg, c) for c in tb.CORPORA} == {"stereotyped": 0.7, "balanced": 0.45}
    fields = {f.name for f in dataclasses.fields(tb.TestbedParams)}
    assert set(tb.CORPORA.values()) <= fields  # every strength key is a params key
    assert {v: (s.corpus, s.recipe) for v, s in tb.VARIANTS.items()} == {
        "control": ("balanced", "scratch"), "diffuse": ("stereotyped", "scratch"),
        "routed": ("stereotyped", "designated"), "routed_null": ("balanced", "designated"),
        "nonrouted": ("stereotyped", "outside"),
    }  # fmt: skip
    assert tb.variant("routed_null", "testbed_plant") == tb.Variant("balanced", "designated")
    assert tb.variant("nonrouted", "testbed_plant") == tb.Variant("stereotyped", "outside")


def test_bad_input_errors_name_the_input() -> None:
    cfg = tb.TestbedParams()
    with pytest.raises(RoutelabError, match="unknown corpus 'biased'. Available: stereotyped, balanced"):
        tb.strength_for(cfg, "biased")
    with pytest.raises(RoutelabError, match="--variant routed: stage testbed_train trains the variants control, diffuse"):
        tb.variant("routed", "testbed_train")
    cfg.strength = 1.5
    with pytest.raises(RoutelabError, match=r"testbed.strength = 1.5 is outside \[0, 1\]"):
        tb.strength_for(cfg, "stereotyped")
    with pytest.raises(RoutelabError, match="unknown key 'stength'. Did you mean 'strength'"):
        section(tb.TestbedParams, {"stength": 0.7}, "testbed")


def test_random_streams_are_fixed_and_independent() -> None:
    # the stream numbers are part of the outputs: rng(seed, purpose) == default_rng([seed, number])
    assert tb.RNG_STREAMS == {
        "own_halves": 1, "demographic": 2, "facts": 3, "order": 4, "train_data": 5, "neutral": 6, "plant_data": 7,
        "plant_designated": 8,
    }  # fmt: skip
    a = tb.rng(0, "facts").integers(1 << 30, size=4)
    assert a.tolist() == np.random.default_rng([0, 3]).integers(1 << 30, size=4).tolist()
    assert a.tolist() != tb.rng(0, "order").integers(1 << 30, size=4).tolist()


def test_the_corpus_half_imports_without_torch() -> None:
    code = "import sys; from routelab import testbed; testbed.vocabulary(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_no_testbed_module_imports_its_own_package() -> None:
    """The params live in testbed.params; a child importing ``routelab.testbed`` would be a cycle in waiting."""
    for path in (ROOT / "src" / "routelab" / "testbed").glob("*.py"):
        if path.name == "__init__.py":
            continue
        text = path.read_text()
        assert "from routelab.testbed import" not in text and "from routelab import testbed" not in text, path.name
