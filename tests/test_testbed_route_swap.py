"""The route swap (routelab.testbed.route_swap): forcing a donor's routing into a model, against
hand-checked cases: a model that differs from the donor only in its routers becomes the donor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from routelab.errors import RoutelabError
from routelab.testbed import route_swap
from routelab.testbed import truth as truth_mod
from test_testbed_truth import saved  # noqa: F401  (its module-scoped fixture: a corpus and a saved tiny model)


def _rerouted(model: Any, seed: int) -> Any:
    """A copy of ``model`` whose routers alone are new (wide, so that routing is decisive)."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for name, p in other.named_parameters():
        if name.endswith("mlp.gate.weight"):
            p.data = torch.randn(p.shape, generator=g) * 2 / p.shape[1] ** 0.5
    return other


def test_forced_routing_of_a_donor_gives_the_donor_s_log_likelihoods(saved) -> None:  # type: ignore[no-untyped-def]
    """Parity: B differs from A in its routers only, so B with A's routing forced in is A."""
    _, model, tok = saved
    a, b = _rerouted(model, 1), _rerouted(model, 2)
    sents = ["the male nurse opened the door.", "the female nurse opened the door.", "the engineer was late."]
    ll = lambda m: truth_mod.loglik(m, tok, [""] * 3, sents, batch_size=2)  # noqa: E731  (two batches: call order)
    with route_swap.recorded_routing(a) as calls:
        ll_a = ll(a)
    assert not np.allclose(ll(b), ll_a, atol=1e-4)  # the routers matter here
    with route_swap.forced_routing(b, calls):
        ll_b_forced = ll(b)
    np.testing.assert_allclose(ll_b_forced, ll_a, rtol=0, atol=1e-5)
    with pytest.raises(RoutelabError, match="does not match the recording"):
        with route_swap.forced_routing(b, calls):
            truth_mod.loglik(b, tok, [""] * 3, sents, batch_size=3)  # other batches: refused, not misapplied


def test_route_swap_with_itself_as_donor_changes_nothing(saved) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = saved
    out = route_swap.preference_under_routing_of(root / "model", root / "model", root / "corpus", batch_size=64)
    assert out["delta"] == 0.0 and out["delta_ci90"] == [0.0, 0.0] and out["pref_own"] == out["pref_donor_routing"]


def test_cluster_bootstrap_resamples_whole_clusters() -> None:
    # two clusters with means 1 and 0: a resample's mean is 1, 0.5 or 0 (p = 1/4, 1/2, 1/4) → 90 % CI [0, 1]
    values = np.array([1.0] * 10 + [0.0] * 10)
    assert route_swap.cluster_bootstrap_ci(values, ["a"] * 10 + ["b"] * 10, confidence=0.9, seed=0) == (0.0, 1.0)
    # the same 20 values as independent items: sd of the mean 0.5/√20 = 0.112, 90 % CI ≈ 0.5 ± 0.18
    low, high = route_swap.cluster_bootstrap_ci(values, [str(i) for i in range(20)], confidence=0.9, seed=0)
    assert 0.25 <= low <= 0.35 and 0.65 <= high <= 0.75
