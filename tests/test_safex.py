"""routelab.safex: the SAFEx intersection on hand-built counts, the fairness adaptation on a log."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from routelab.config import load_params
from routelab.errors import RoutelabError
from routelab.prompts import PromptsParams, build_prompts
from routelab.safex import SAFEX_COLUMNS, SafexParams, safex_fairness, safex_select
from routelab.tables import SELECTION_COLUMNS, load_selection
from routelab.vocab import Vocabulary
from test_counting import routing_meta, write_routing

ROOT = Path(__file__).resolve().parents[1]


def safex_case():
    # L = 1, K = 4, 10 tokens per prompt. X (10 prompts): expert 2 on every token; half the
    # prompts also use expert 1 on every token, the other half expert 3. Contrast: 10 prompts
    # on expert 0 only.
    P = 20
    counts = np.zeros((P, 1, 4), int)
    counts[:10, 0, 2] = 10
    counts[:5, 0, 1] = 10
    counts[5:10, 0, 3] = 10
    counts[10:, 0, 0] = 10
    n_tokens = np.full((P, 1), 10)
    pos = np.arange(P) < 10
    return counts, n_tokens, pos, ~pos


def test_safex_intersection():
    counts, n, pos, neg = safex_case()
    # N = floor(0.5 · 4) = 2: expert 2 is top-2 in every resample; 1 and 3 swap places
    out = safex_select(counts, n, pos, neg, [7], n_resamples=50, alpha=0.5, seed=0).sort("expert")
    assert out.columns == list(SAFEX_COLUMNS) == [*SELECTION_COLUMNS, "stability"]
    assert out.filter("selected")["expert"].to_list() == [2]
    stab = dict(zip(out["expert"], out["stability"]))
    assert stab[2] == 1.0 and stab[0] == 0.0
    assert 0 < stab[1] < 1 and 0 < stab[3] < 1 and stab[1] + stab[3] == pytest.approx(1.0)
    assert out["score"].to_list() == pytest.approx([-1.0, 0.5, 1.0, 0.5])  # difference, full sample
    assert out["layer"].unique().to_list() == [7]
    # N = 1: only expert 2
    out1 = safex_select(counts, n, pos, neg, [7], n_resamples=20, alpha=0.25, seed=1)
    assert out1.filter("selected")["expert"].to_list() == [2]
    # abs_difference: |−1| for expert 0 ties expert 2 at 1.0 → both top-2 always
    outa = safex_select(counts, n, pos, neg, [7], n_resamples=20, alpha=0.5, score="abs_difference")
    assert sorted(outa.filter("selected")["expert"].to_list()) == [0, 2]
    # rate: X alone; p(e|X) = [0, .5, 1, .5] → expert 2 always first
    outr = safex_select(counts, n, pos, None, [7], n_resamples=20, alpha=0.25, score="rate")
    assert outr["score"].to_list() == pytest.approx([0.0, 0.5, 1.0, 0.5])
    assert outr.filter("selected")["expert"].to_list() == [2]


def test_safex_errors():
    counts, n, pos, neg = safex_case()
    with pytest.raises(RoutelabError, match="raise safex.alpha"):
        safex_select(counts, n, pos, neg, [0], n_resamples=5, alpha=0.2)
    with pytest.raises(RoutelabError, match="contrast group"):
        safex_select(counts, n, pos, None, [0], n_resamples=5, alpha=0.5)
    with pytest.raises(RoutelabError, match="alpha"):
        SafexParams(alpha=0.0)
    with pytest.raises(RoutelabError, match="Did you mean 'rate'"):
        SafexParams(score="rat")


def _log(tmp_path):
    v = Vocabulary(axes={"gender": ("female", "male")}, professions=("doctor", "nurse"),
                   templates=("The {person} slept .", "We met the {person} ."))  # fmt: skip
    prompts = build_prompts(v, None, PromptsParams(test_fraction=0.0))
    rows = []
    for pid, g, text in prompts.select("prompt_id", "group", "text").iter_rows():
        for pos in range(len(text.split())):
            rows.append((pid, 3, pos, [5 if g != "neutral" else 1, 0]))  # demographic → expert 5
    return write_routing(tmp_path / "r.parquet", routing_meta(8, 2, [3]), rows), prompts


def test_safex_fairness_on_a_routing_file(tmp_path):
    path, prompts = _log(tmp_path)
    out, summary = safex_fairness(path, prompts, SafexParams(alpha=0.125, n_resamples=10))
    assert out.filter("selected").select("layer", "expert").rows() == [(3, 5)]
    # score = p(e|demographic) − p(e|neutral): +1 for expert 5, −1 for expert 1, 0 elsewhere
    assert out.sort("expert")["score"].to_list() == [0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert load_selection(out).height == 8
    # 2 templates × 2 professions = 4 contexts: 4 neutral and 8 demographic prompts
    assert summary == {
        "safex_selected": 1, "top_n": 1, "selected_experts": ["L3/E5"],
        "n_prompts_demographic": 8, "n_prompts_neutral": 4,
        "settings": {"n_resamples": 10, "alpha": 0.125, "score": "difference", "split": "validation", "seed": 0},
    }  # fmt: skip


def test_error_hints_name_real_safex_keys(tmp_path):
    keys = {f.name for f in dataclasses.fields(SafexParams)}
    assert set(load_params(ROOT / "params.yaml")["safex"]) == keys  # params.yaml ↔ the dataclass
    path, prompts = _log(tmp_path)
    with pytest.raises(RoutelabError, match="set safex.split") as err:
        safex_fairness(path, prompts, SafexParams(split="test"))
    assert set(re.findall(r"safex\.(\w+)", str(err.value))) <= keys
