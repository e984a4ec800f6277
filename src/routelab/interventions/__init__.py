"""Interventions: scoring conditions, comparing them, and the runner every intervention stage plugs into.

| module    | what it holds                                                                                   |
|-----------|-------------------------------------------------------------------------------------------------|
| engine    | ``Suite``/``load_suite`` (a split's items + the baseline's per-item rows), ``score_conditions`` (C conditions in one batched pass, LayerFork), ``average_draws`` |
| compare   | ``compare``/``compare_suite``: paired tests vs the baseline and between conditions (clusters, TOST, BH), ``records``, ``results_table`` |
| runner    | ``Intervention`` (a stage as data + its functions), ``Run``, ``execute``, ``run_intervention``, ``stage_inputs`` |

The stages, each one :class:`Intervention` in its own module:

| stage        | module        | split      | conditions                                                   | paired between conditions |
|--------------|---------------|------------|--------------------------------------------------------------|---------------------------|
| aals         | aals          | validation | ARR at λ_probe on one MoE layer each (Eq. 5)                 | —                         |
| arr_sweep    | arr           | validation | ARR at each λ of the grid on the AALS layers (Eq. 7)          | —                         |
| arr_eval     | arr           | test       | ARR at λ* (Table 6)                                           | —                         |
| masking      | masking       | test       | top-n, bottom-n, random-n experts by φ off (Table 2)          | mask_top vs mask_random   |
| ablation     | ablation      | test       | 17 ablated profiles under ARR (Table 4)                       | power_1 vs random_phi     |
| alternatives | alternatives  | val + test | FSP, SAFEx-style and random selection (each its own λ*), prompt debiasing (Table 8) | fsp vs each     |
| steer        | steer         | test       | SteerMoE's detected experts (de)activated                     | —                         |
"""

from routelab.interventions.compare import BASELINE, compare, compare_suite, find, records, results_table
from routelab.interventions.engine import Suite, average_draws, load_suite, score_conditions, write_condition_tables
from routelab.interventions.runner import (
    Intervention,
    Outcome,
    Run,
    StageInputs,
    delta_line,
    execute,
    run_intervention,
    score_and_compare,
    stage_inputs,
)

__all__ = [
    "BASELINE",
    "Intervention",
    "Outcome",
    "Run",
    "StageInputs",
    "Suite",
    "average_draws",
    "compare",
    "compare_suite",
    "delta_line",
    "execute",
    "find",
    "load_suite",
    "records",
    "results_table",
    "run_intervention",
    "score_and_compare",
    "score_conditions",
    "stage_inputs",
    "write_condition_tables",
]
