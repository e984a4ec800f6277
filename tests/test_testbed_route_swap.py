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
    root, model, tok = saved
    out = route_swap.preference_under_routing_of(root / "model", root / "model", root / "corpus", batch_size=64, margin=0.1)
    m = out.metrics
    assert m["delta"] == 0.0 and m["ci_low"] == m["ci_high"] == 0.0 and m["pref_own"] == m["pref_donor_routing"]
    rows = truth_mod.crows_rows(root / "corpus")
    assert m["equivalent"] and m["p"] == 1.0 and m["margin"] == 0.1 and m["n_pairs"] == len(rows)
    # its own-routing pass is the ground truth's CrowS scoring, which the plant stage reuses instead of a second pass
    np.testing.assert_array_equal(out.own_ll, truth_mod.crows_loglik(model, tok, rows, 64))
    np.testing.assert_array_equal(out.donor_ll, out.own_ll)


def test_route_swap_delta_is_the_paired_comparison_of_the_two_preferences(saved) -> None:  # type: ignore[no-untyped-def]
    """With a donor whose routers alone differ, Δ is mean(pref_swap) − mean(pref_own) over the same pairs,
    and its test is statistics.compare_paired clustered by the corpus's units (parity, not a re-derivation)."""
    from routelab.statistics import compare_paired

    root, model, tok = saved
    donor_dir = root / "rerouted"
    if not donor_dir.exists():
        _rerouted(model, 1).save_pretrained(donor_dir)
        tok.save_pretrained(donor_dir)
    out = route_swap.preference_under_routing_of(root / "model", donor_dir, root / "corpus", batch_size=64, margin=0.1, seed=3)
    rows = truth_mod.crows_rows(root / "corpus")
    n = len(rows)
    donor = _rerouted(model, 1)
    with route_swap.recorded_routing(donor) as calls:
        donor_ll = truth_mod.crows_loglik(donor, tok, rows, 64)
    with route_swap.forced_routing(model, calls):
        swapped = truth_mod.crows_loglik(model, tok, rows, 64)
    np.testing.assert_array_equal(out.donor_ll, donor_ll)
    own = (out.own_ll[:n] > out.own_ll[n:]).astype(float)
    swap = (swapped[:n] > swapped[n:]).astype(float)
    assert out.metrics["delta"] == pytest.approx(swap.mean() - own.mean()) and out.metrics["delta"] != 0.0
    units = [r["cluster"] for r in rows]
    assert len(set(units)) < n  # frames of a unit: the test must resample units, not pairs
    c = compare_paired((own,), (swap,), clusters=units, margin=0.1, seed=3)
    assert (out.metrics["ci_low"], out.metrics["ci_high"], out.metrics["p"], out.metrics["equivalent"]) == (
        c.ci_low, c.ci_high, c.p, c.equivalent)


def test_ground_truth_reuses_given_crows_scores_and_refuses_the_wrong_shape(saved) -> None:  # type: ignore[no-untyped-def]
    root, model, tok = saved
    ll = truth_mod.crows_loglik(model, tok, truth_mod.crows_rows(root / "corpus"), 64)
    assert truth_mod.ground_truth(root / "model", root / "corpus", crows_ll=ll) == truth_mod.ground_truth(root / "model", root / "corpus")
    with pytest.raises(RoutelabError, match=r"crows_ll has shape \(3,\), the corpus has \d+ pairs"):
        truth_mod.ground_truth(root / "model", root / "corpus", crows_ll=np.zeros(3))
