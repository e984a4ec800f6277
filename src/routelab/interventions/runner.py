"""One runner that every intervention stage plugs into (docs/interventions.md).

An intervention module (aals, arr, masking, ablation, alternatives, steer) describes its stage as
an :class:`Intervention`: its params section, its split, the extra inputs it reads, how to build
its conditions and how to shape its result. The runner does the rest, the same way for all:

    params, inputs, the φ profile, the split's items     (no model yet: bad input fails in seconds)
      → conditions (one that cannot be built for a reason of the data is skipped, with the reason)
      → the model → every condition scored in one pass (engine) → per-item tables
      → paired comparisons: with the baseline, and between conditions (compare), BH across all
      → <out>/comparisons.json, the stage's metrics file, its plots, one summary line

A stage script is its docstring and one line::

    if __name__ == "__main__":
        run_intervention(masking.STAGE, __doc__)

Skipped conditions are results, not errors: an empty SAFEx selection, a SteerMoE detection
that finds nothing, λ* = 0 or an AALS selection without a layer leave the stage's metrics with
``skipped: {condition: reason}``, the summary line says so, and later stages and the report run.
Parameter errors stay errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import polars as pl
from transformers import AutoConfig

from routelab import compute
from routelab.adapters import adapter_for_config
from routelab.bench_baseline import BenchBaselineParams
from routelab.conditions import Condition, ConditionContext
from routelab.config import load_params, section
from routelab.errors import RoutelabError
from routelab.interventions.compare import compare_suite, records
from routelab.interventions.engine import Suite, average_draws, load_suite, score_conditions, write_condition_tables
from routelab.io import write_json
from routelab.models import LoadedModel, ModelSpec, load_model, model_spec
from routelab.stage import run_stage, stage_args
from routelab.statistics import Comparison, StatsParams
from routelab.tables import load_profile


def model_sizes(spec: ModelSpec) -> tuple[int, int, int]:
    """(K routed experts, top-k, decoder layers) from the model's config alone (no weights)."""
    try:
        config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    except (OSError, ValueError) as exc:
        raise RoutelabError(f"cannot read the config of model {spec.path!r}: {exc}") from None
    K, k = adapter_for_config(config).sizes(config)
    return K, k, int(getattr(config, "num_hidden_layers", 0) or 0)


@dataclass
class StageInputs:
    """An intervention stage's inputs, checked before any model is loaded."""

    model: str  # the model's name in params.yaml
    spec: ModelSpec
    bench: BenchBaselineParams
    stats: StatsParams
    params: dict[str, Any]  # the whole params.yaml (the stage reads its own section)
    profile: pl.DataFrame  # the φ profile, checked against the model's K and layers
    num_experts: int
    top_k: int

    def context(self, layers: list[int], seed: int) -> ConditionContext:
        """A condition context editing ``layers`` (the layers ARR-style conditions touch)."""
        return ConditionContext(self.profile, layers, self.num_experts, self.top_k, seed)

    @property
    def moe_layers(self) -> list[int]:
        return sorted(set(self.profile["layer"].to_list()))


def stage_inputs(params_path: str | Path, model: str, profile_path: str | Path) -> StageInputs:
    """Params, model spec, benchmark settings and the φ profile of ``model``, all checked."""
    params = load_params(params_path)
    spec = model_spec(params, model)
    bench = section(BenchBaselineParams, params.get("bench_baseline"), "bench_baseline")
    stats = section(StatsParams, params.get("statistics"), "statistics")
    K, k, n_layers = model_sizes(spec)
    profile = load_profile(profile_path, num_experts=K)
    layers = sorted(set(profile["layer"].to_list()))
    if n_layers and max(layers) >= n_layers:
        raise RoutelabError(
            f"{profile_path}: layers {layers} but model {model} has {n_layers} decoder layers: a profile "
            "of another model; re-run the `profile` stage for this model"
        )
    return StageInputs(model, spec, bench, stats, params, profile, K, k)


@dataclass
class Run:
    """What an intervention's functions see while its stage runs."""

    inputs: StageInputs
    cfg: Any  # the stage's params section (its dataclass)
    extra: dict[str, Any]  # the extra inputs: aals / sweep read as JSON, safex / prompts as paths
    out: Path  # the stage's data folder (per-item tables, comparisons.json, the stage's own files)
    suite: Suite | None = None  # the split's items and baseline rows (None for a stage that loads its own)
    lm: LoadedModel | None = None  # the model, once loaded
    skipped: dict[str, str] = field(default_factory=dict)  # condition -> why it was not run
    state: dict[str, Any] = field(default_factory=dict)  # a stage's own intermediate results

    def skip(self, name: str, why: str) -> None:
        """Record that condition ``name`` is not run, and why (a result: metrics, summary line, report)."""
        self.skipped[name] = why

    @property
    def stats(self) -> StatsParams:
        return self.inputs.stats


@dataclass
class Outcome:
    """Conditions scored, their per-item rows and their comparisons."""

    conditions: list[Condition]
    rows: dict[str, dict[str, pl.DataFrame]]
    comparisons: list[Comparison]


NoPairs: Callable[[Run, list[Condition]], list[tuple[str, str]]] = lambda run, conds: []  # noqa: E731


@dataclass(frozen=True)
class Intervention:
    """An intervention stage as data plus the functions that differ (docs/interventions.md)."""

    name: str  # the stage, its params section and its metrics file
    params: type  # the params section's dataclass
    split: str  # validation | test: the split its conditions are scored on
    conditions: Callable[[Run], list[Condition]]  # built before the model loads (after `prepare` if given)
    shape: Callable[[Run, Outcome], dict[str, Any]]  # the stage's result (its metrics, without the records)
    summary: Callable[[Run, dict[str, Any]], str]  # the summary line's body
    inputs: tuple[str, ...] = ()  # extra stage inputs: aals, sweep (JSON), safex, prompts (paths)
    benchmarks: Callable[[Run], Sequence[str]] | None = None  # default: every benchmark of bench_baseline
    metrics: Callable[[Run], Mapping[str, Sequence[str]] | None] | None = None  # default: each benchmark's headline
    against: Callable[[Run, list[Condition]], list[tuple[str, str]]] = NoPairs  # (condition, reference) pairs
    prepare: Callable[[Run], None] | None = None  # needs the model before its conditions (steer's detection)
    run: Callable[[Run, list[Condition]], Outcome] | None = None  # a stage's own loop (alternatives)
    plot: Callable[[Run, dict[str, Any], list[dict[str, Any]], Path], None] | None = None
    plots: bool = False  # writes plots (the stage takes --plots)


JSON_INPUTS = ("aals", "sweep")  # extra inputs read as JSON; the others are paths


def score_and_compare(run: Run, spec: Intervention, conds: list[Condition]) -> Outcome:
    """The default loop: score ``conds`` on the run's suite in one pass, average the draws of each
    random group (the paper's "averaged over draws"), write the per-item tables, compare."""
    if not conds:
        return Outcome([], {}, [])
    rows = score_conditions(run.lm, conds, run.suite, label=spec.name)
    groups: dict[str, list[str]] = {}
    for c in conds:
        if c.group:
            groups.setdefault(c.group, []).append(c.name)
    for g, names in groups.items():
        rows[g] = {b: average_draws([rows[n][b] for n in names]) for b in run.suite.benches}
    write_condition_tables(run.out, rows, run.suite.split)
    metrics = spec.metrics(run) if spec.metrics else None
    comps = compare_suite(run.suite, rows, run.stats, metrics=metrics, against=spec.against(run, conds))
    return Outcome(conds, rows, comps)


def execute(spec: Intervention, run: Run) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Conditions → model → scores → comparisons → the stage's result and records (no files but
    the per-item tables). Usable from a notebook: build a :class:`Run` and call it."""
    conds = None if spec.prepare else spec.conditions(run)  # bad settings fail before the model loads
    if run.lm is None and (spec.prepare or conds or spec.run):
        run.lm = load_model(run.inputs.spec)
    if spec.prepare:
        spec.prepare(run)
        conds = spec.conditions(run)
    outcome = spec.run(run, conds) if spec.run else score_and_compare(run, spec, conds)
    result = spec.shape(run, outcome)
    if run.skipped:
        result["skipped"] = dict(run.skipped)
    result["compute"] = compute.label()
    return result, records(outcome.comparisons)


def run_intervention(spec: Intervention, doc: str) -> None:
    """A stage script's whole body: parse its command line, run it, write its outputs, print its summary."""
    run_stage(lambda: _main(spec, doc), spec.name)


def _main(spec: Intervention, doc: str) -> str:
    flags = ("--model", "--profile", "--splits", "--baseline", *(f"--{i}" for i in spec.inputs), "--out", "--metrics")
    args = stage_args(doc, *flags, *(("--plots",) if spec.plots else ()), outputs=("--metrics",),
                      output_dirs=("--out",) + (("--plots",) if spec.plots else ()))  # fmt: skip
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(spec.params, inputs.params.get(spec.name), spec.name)
    extra = {name: _read_input(getattr(args, name), name) for name in spec.inputs}
    run = Run(inputs, cfg, extra, Path(args.out))
    names = list(spec.benchmarks(run)) if spec.benchmarks else inputs.bench.benchmarks
    if spec.run is None:
        run.suite = load_suite(inputs.bench, inputs.spec, names, spec.split, splits_dir=args.splits,
                               baseline_dir=args.baseline)  # fmt: skip
    run.state["splits_dir"], run.state["baseline_dir"], run.state["benchmarks"] = args.splits, args.baseline, names
    result, recs = execute(spec, run)
    write_json(run.out / "comparisons.json", recs)
    write_json(args.metrics, result)
    if spec.plot is not None:
        spec.plot(run, result, recs, Path(args.plots))
    line = f"{spec.name}[{inputs.model}]: {spec.summary(run, result)}"
    if run.skipped:
        line += "; skipped: " + "; ".join(f"{k} ({v})" for k, v in run.skipped.items())
    return line


def _read_input(path: str, name: str) -> Any:
    if name not in JSON_INPUTS:
        return path
    p = Path(path)
    if not p.is_file():
        raise RoutelabError(f"--{name} {p} not found: run the stage that writes it first (dvc repro)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise RoutelabError(f"--{name} {p}: not valid JSON ({exc.msg}, line {exc.lineno}): re-run the stage that writes it") from None


def delta_line(result: Mapping[str, Any], conditions: Sequence[str], key: str = "crows", metric: str = "pct_stereotype") -> str:
    """A summary line's body: Δ of ``key``.``metric`` for each condition in ``result['results']``, with p_BH."""
    parts = []
    for name in conditions:
        entry = result.get("results", {}).get(name, {}).get(key, {}).get(metric)
        if entry:
            parts.append(f"{name} {entry['delta']:+.3f} (p_BH {entry['p_bh']:.2g})")
    return ", ".join(parts) or "no comparison"
