"""Alternative expert identification and prompt debiasing against FSP (FARE Table 8, docs/method.md §4); stage `alternatives`.

Like for like: FSP's profile, a SAFEx-style stable selection (φ = 1 on the `safex` stage's
selected experts) and random selection (as many random experts as SAFEx selects, ``random_draws``
draws, averaged) all edit the SAME layers — the AALS layers FSP's ARR edits — and each gets its
own λ* from the same sweep (the ``arr.lambdas`` grid on the validation split, FARE Eq. 7 with
``arr.beta``; FSP's is the `arr_sweep` stage's). Then each runs at its λ* on the test split,
beside prompt debiasing (an instruction prefix before every context, no routing edit: the
non-routing alternative). FSP is also compared with each selection item by item
(``fsp_vs_safex``, ``fsp_vs_random_selection``).

A selection with no expert in those layers, or a λ* of 0 (no λ of the grid brings the preference
closer to parity within the budget), is a result: the condition is skipped with the reason.
The prefix is English: on the testbeds, whose word-level vocabulary lacks its words, it is a run
of unknown tokens — a context change with no instruction in it, reported as found.

(Renamed from `baselines`: "baseline" means the unedited model everywhere in routelab.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from routelab import plots
from routelab.arr import ArrParams, SweepPoint, pareto_lambda
from routelab.benchmarks import metrics_from_rows
from routelab.conditions import Condition, build, selected_in_layers
from routelab.config import section
from routelab.errors import RoutelabError
from routelab.interventions import (
    Intervention,
    Outcome,
    Run,
    average_draws,
    compare_suite,
    delta_line,
    load_suite,
    results_table,
    score_conditions,
    write_condition_tables,
)
from routelab.tables import load_selection

KINDS = ("fsp", "safex", "random_selection", "prompt_prefix")
SELECTIONS = ("safex", "random_selection")  # the methods that get their own λ* from the sweep


@dataclass
class AlternativesParams:
    """The ``alternatives:`` section of params.yaml."""

    conditions: list[str] = field(default_factory=lambda: list(KINDS))  # which alternatives to run
    prompt_prefix: str = "Answer without relying on stereotypes about social groups."  # prompt debiasing
    random_draws: int = 3  # random expert selections, averaged
    seed: int = 0  # random draws

    def __post_init__(self) -> None:
        bad = [c for c in self.conditions if c not in KINDS]
        if bad:
            raise RoutelabError(f"alternatives.conditions: unknown condition(s) {bad}; available: {', '.join(KINDS)}")
        if self.random_draws < 1:
            raise RoutelabError(f"alternatives.random_draws must be >= 1, found {self.random_draws}")


def _arr(run: Run) -> ArrParams:
    return section(ArrParams, run.inputs.params.get("arr"), "arr")


def _selection_methods(run: Run) -> dict[str, Any]:
    """Which selections can run on the AALS layers: {method: n selected} or skipped with the reason."""
    cfg: AlternativesParams = run.cfg
    layers = run.extra["sweep"]["layers"]
    wanted = [m for m in SELECTIONS if m in cfg.conditions]
    if not wanted:
        return {}
    table = load_selection(run.extra["safex"])
    everywhere = selected_in_layers(table, table["layer"].unique().to_list())
    safex_empty = everywhere.height == 0
    if not layers or safex_empty:  # say every reason: both are results of their own stages
        why = "; ".join(w for w, empty in (("AALS selected no layer to edit", not layers),
                                            ("SAFEx selected no expert (see metrics safex.json)", safex_empty)) if empty)  # fmt: skip
        for m in wanted:
            run.skip(m, why)
        return {}
    chosen = everywhere.filter(pl.col("layer").is_in(layers))
    if chosen.height == 0:
        for m in wanted:
            run.skip(m, f"SAFEx selected no expert in layers {layers} (see metrics safex.json)")
        return {}
    return {m: chosen.height for m in wanted}


def _sweep_conditions(run: Run, methods: dict[str, int]) -> list[Condition]:
    cfg: AlternativesParams = run.cfg
    ctx = run.inputs.context(run.extra["sweep"]["layers"], cfg.seed)
    out = []
    for lam in _arr(run).lambdas:
        if "safex" in methods:
            out.append(build("selection", ctx, table=run.extra["safex"], lam=lam, label="safex"))
        if "random_selection" in methods:
            out += [build("random_selection", ctx, n=methods["random_selection"], lam=lam, draw=d)
                    for d in range(cfg.random_draws)]  # fmt: skip
    return out


def conditions(run: Run) -> list[Condition]:
    """The validation sweep's conditions (every selection at every λ); the test conditions are
    built in :func:`run_alternatives` once each λ* is known."""
    run.state["methods"] = _selection_methods(run)
    return _sweep_conditions(run, run.state["methods"])


def _sweep(run: Run, conds: list[Condition]) -> dict[str, dict[str, Any]]:
    """λ* of each selection: the validation rows of each λ (draws averaged) → (pref, PPL) → Eq. 7."""
    arr_cfg = _arr(run)
    suite = load_suite(run.inputs.bench, run.inputs.spec, [arr_cfg.bias, arr_cfg.utility], "validation",
                       splits_dir=run.state["splits_dir"], baseline_dir=run.state["baseline_dir"])  # fmt: skip
    rows = score_conditions(run.lm, conds, suite, label="alternatives sweep") if conds else {}
    (bias_b, _), (util_b, _) = suite.benches[arr_cfg.bias], suite.benches[arr_cfg.utility]

    def point(lam: float, by_bench: dict[str, pl.DataFrame]) -> SweepPoint:
        pref = metrics_from_rows(bias_b, by_bench[arr_cfg.bias])["pct_stereotype"]
        return SweepPoint(lam, pref, metrics_from_rows(util_b, by_bench[arr_cfg.utility])["ppl"])

    base = point(0.0, suite.baseline)
    out = {}
    for method in run.state["methods"]:
        points = [base]
        for lam in arr_cfg.lambdas:
            if method == "safex":
                by_bench = rows[next(c.name for c in conds if c.kind == "selection" and c.settings["lambda"] == lam)]
            else:
                names = [c.name for c in conds if c.kind == "random_selection" and c.settings["lambda"] == lam]
                by_bench = {b: average_draws([rows[n][b] for n in names]) for b in suite.benches}
            points.append(point(lam, by_bench))
        lam_star, why = pareto_lambda(points, base.ppl, arr_cfg.beta)
        out[method] = {"lambda_star": lam_star, "reason": why,
                       "points": [{"lambda": p.lam, "pct_stereotype": p.pref, "ppl": p.ppl} for p in points]}  # fmt: skip
    return out


def _test_conditions(run: Run, sweeps: dict[str, dict[str, Any]]) -> list[Condition]:
    cfg: AlternativesParams = run.cfg
    layers, lam_fsp = run.extra["sweep"]["layers"], run.extra["sweep"]["lambda_star"]
    ctx = run.inputs.context(layers, cfg.seed)
    out = []
    for kind in cfg.conditions:
        if kind == "fsp":
            if not layers or lam_fsp == 0:
                run.skip("fsp", "AALS selected no layer" if not layers else f"λ* = 0 ({run.extra['sweep'].get('reason', '')})")
            else:  # FARE's own profile, under this table's name
                out.append(replace(build("arr", ctx, lam=lam_fsp), name="fsp"))
        elif kind == "prompt_prefix":
            out.append(build("prompt_prefix", ctx, text=cfg.prompt_prefix))
        elif kind not in sweeps:  # skipped before the sweep (no layer, or no selected expert in them)
            continue
        elif sweeps[kind]["lambda_star"] == 0:
            run.skip(kind, f"its λ* = 0 ({sweeps[kind]['reason']})")
        elif kind == "safex":
            out.append(replace(build("selection", ctx, table=run.extra["safex"], lam=sweeps[kind]["lambda_star"],
                                     label="safex"), name="safex"))  # fmt: skip
        elif kind == "random_selection":
            lam, n = sweeps[kind]["lambda_star"], run.state["methods"][kind]
            out += [replace(c, name=f"random_selection_{c.settings['draw']}", group="random_selection")
                    for c in (build("random_selection", ctx, n=n, lam=lam, draw=d) for d in range(cfg.random_draws))]  # fmt: skip
    return out


def run_alternatives(run: Run, sweep_conds: list[Condition]) -> Outcome:
    """Sweep each selection on validation, then every alternative at its λ* on the test split."""
    run.state["sweeps"] = _sweep(run, sweep_conds)
    conds = _test_conditions(run, run.state["sweeps"])
    suite = load_suite(run.inputs.bench, run.inputs.spec, run.state["benchmarks"], "test",
                       splits_dir=run.state["splits_dir"], baseline_dir=run.state["baseline_dir"])  # fmt: skip
    run.suite = suite
    if not conds:
        return Outcome([], {}, [])
    rows = score_conditions(run.lm, conds, suite, label="alternatives")
    draws = [c.name for c in conds if c.group == "random_selection"]
    if draws:
        rows["random_selection"] = {b: average_draws([rows[n][b] for n in draws]) for b in suite.benches}
    write_condition_tables(run.out, rows, suite.split)
    against = [("fsp", m) for m in SELECTIONS if "fsp" in rows and m in rows]
    return Outcome(conds, rows, compare_suite(suite, rows, run.stats, against=against))


def shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """Table 8: each alternative's λ* and Δ per benchmark."""
    sweeps = run.state.get("sweeps", {})
    return {
        "layers": run.extra["sweep"]["layers"],
        "lambda_star": {"fsp": run.extra["sweep"]["lambda_star"], **{m: s["lambda_star"] for m, s in sweeps.items()}},
        "split": "test",
        "sweeps": sweeps,
        "settings": {c.name: c.settings for c in outcome.conditions},
        "results": results_table(outcome.comparisons),
    }


STAGE = Intervention(
    name="alternatives",
    params=AlternativesParams,
    split="test",
    inputs=("sweep", "safex"),
    conditions=conditions,
    run=run_alternatives,
    shape=shape,
    summary=lambda run, r: "λ* " + ", ".join(f"{k} {v:g}" for k, v in r["lambda_star"].items()) + "; "
    + delta_line(r, ["fsp", "safex", "random_selection", "prompt_prefix"]),
    plot=lambda run, r, recs, out: plots.condition_deltas(recs, out, "alternatives",
                                                          title=f"{run.inputs.model}: alternatives at their λ*"),
    plots=True,
)
