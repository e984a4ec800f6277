"""The whole params.yaml checked at once, before any stage runs (stage `check_params`, ``routelab check-params``).

    problems = check_params("params.yaml")            # [] when every section and key is known and valid
    check_params("params.yaml", fast=True)            # keys only, in well under a second (no torch)

Every section is checked against the dataclass that reads it (``SECTIONS``): an unknown section
or key is named with the nearest known one ("Did you mean 'beta'?"). The fast pass reads the
dataclasses' fields from their source (``ast``: no torch, no model code imported), so a typo
fails in seconds, before DVC removes any stage's outputs. The full pass then builds each
dataclass (types, ranges, their own checks: an empty or negative λ grid, an unknown benchmark)
and checks what can be checked without a model: ``pipeline.models`` against ``models:``, the
models' local folders, and ``masking.n`` / ``generation.mask_n`` against the expert slots of
every model whose config is on disk.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import json
from pathlib import Path
from typing import Any

from routelab.config import load_params, section
from routelab.errors import RoutelabError

PKG = Path(__file__).resolve().parent
# section -> (module, dataclass) that reads it; "models" maps every entry onto ModelSpec.
SECTIONS: dict[str, tuple[str, str]] = {
    "testbed": ("routelab.testbed.params", "TestbedParams"),
    "prompts": ("routelab.prompts", "PromptsParams"),
    "extract": ("routelab.extract", "ExtractParams"),
    "profile": ("routelab.profile", "ProfileParams"),
    "safex": ("routelab.safex", "SafexParams"),
    "bench_baseline": ("routelab.bench_baseline", "BenchBaselineParams"),
    "statistics": ("routelab.statistics", "StatsParams"),
    "aals": ("routelab.aals", "AalsParams"),
    "arr": ("routelab.arr", "ArrParams"),
    "masking": ("routelab.masking", "MaskingParams"),
    "ablation": ("routelab.ablation", "AblationParams"),
    "alternatives": ("routelab.alternatives", "AlternativesParams"),
    "steer": ("routelab.steer", "SteerParams"),
    "generation": ("routelab.generation", "GenerationParams"),
}
MODEL_SPEC = ("routelab.models", "ModelSpec")
LISTS = ("hub_models", "local_models")  # lists of names of `models:` (stages hub_model, local_model)
TOP = {"pipeline", "models", *LISTS, *SECTIONS}
RENAMED = {"baselines": "alternatives", "arr_test": "arr_eval"}  # sections of earlier releases (docs/rename table)


def _near(key: str, known: list[str] | set[str]) -> str:
    near = difflib.get_close_matches(key, sorted(known), n=1)
    return f" Did you mean '{near[0]}'?" if near else ""


def _class_fields(module: str, cls: str) -> dict[str, str | None]:
    """{field: nested dataclass name or None} of ``module.cls`` read from its source (no import)."""
    path = PKG.parent / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    out: dict[str, str | None] = {}
    for node in classes[cls].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            ann = ast.unparse(node.annotation)
            out[node.target.id] = ann if ann in classes else None
    return out


def _keys(values: Any, module: str, cls: str, where: str) -> list[str]:
    """Unknown keys of a params mapping against a dataclass's fields, nested dataclasses included."""
    if not isinstance(values, dict):
        return [] if values is None else [f"{where}: expected a mapping, found {values!r}"]
    fields = _class_fields(module, cls)
    problems = []
    for key, value in values.items():
        if key not in fields:
            problems.append(f"{where}: unknown key '{key}'.{_near(key, fields)} Known keys: {', '.join(fields)}")
        elif fields[key] is not None:
            problems += _keys(value, module, fields[key], f"{where}.{key}")
    return problems


def fast_problems(params: dict[str, Any]) -> list[str]:
    """Every unknown section or key, and every model name that `models:` lacks (no import of the library)."""
    problems = []
    for key in params:
        if key in RENAMED:
            problems.append(f"params section '{key}' was renamed '{RENAMED[key]}': rename it in params.yaml")
        elif key not in TOP:
            problems.append(f"params.yaml: unknown section '{key}'.{_near(key, TOP)}")
    for name, (module, cls) in SECTIONS.items():
        problems += _keys(params.get(name), module, cls, name)
    models = params.get("models") or {}
    for name, spec in models.items():
        problems += _keys(spec, *MODEL_SPEC, f"models.{name}")
    for key in ("pipeline", *LISTS):
        names = ((params.get("pipeline") or {}).get("models") if key == "pipeline" else params.get(key)) or []
        label = "pipeline.models" if key == "pipeline" else key
        for name in names:
            if name not in models:
                problems.append(f"{label}: '{name}' is not in `models:`.{_near(name, models)} Known: {', '.join(models)}")
    if isinstance(params.get("pipeline"), dict):
        problems += [f"pipeline: unknown key '{k}'. Known keys: models" for k in params["pipeline"] if k != "models"]
    return problems


def full_problems(params: dict[str, Any]) -> list[str]:
    """Each section built by its dataclass (types, ranges and its own checks), then the checks
    that need several sections or a model's config on disk."""
    problems = []
    built: dict[str, Any] = {}
    for name, (module, cls) in SECTIONS.items():
        try:
            built[name] = section(getattr(importlib.import_module(module), cls), params.get(name), name)
        except RoutelabError as exc:
            problems.append(str(exc))
    spec_cls = getattr(importlib.import_module(MODEL_SPEC[0]), MODEL_SPEC[1])
    for name, spec in (params.get("models") or {}).items():
        try:
            section(spec_cls, spec, f"models.{name}")
        except RoutelabError as exc:
            problems.append(str(exc))
    for name in params.get("local_models") or []:
        path = Path(str((params["models"].get(name) or {}).get("path", "")))
        if not (path / "config.json").is_file():
            problems.append(f"local_models: models.{name}.path {path} holds no config.json: point it at a saved model folder")
    for name in params.get("hub_models") or []:
        path = str((params["models"].get(name) or {}).get("path", ""))
        if Path(path).is_dir():
            problems.append(f"hub_models: models.{name}.path {path} is a local folder: list {name} in local_models "
                            "instead, so that DVC re-runs its stages when its files change")  # fmt: skip
    for name in (params.get("pipeline") or {}).get("models") or []:
        problems += _slots(params, built, name)
    return problems


def _slots(params: dict[str, Any], built: dict[str, Any], name: str) -> list[str]:
    """masking.n and generation.mask_n against a model's expert slots, when its config is on disk."""
    config = Path(str((params.get("models", {}).get(name) or {}).get("path", ""))) / "config.json"
    if not config.is_file():
        return []
    cfg = json.loads(config.read_text())
    experts = next((cfg[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if k in cfg), None)
    if not experts:
        return []
    slots = int(cfg.get("num_hidden_layers", 0)) * int(experts)
    out = []
    for key, value in (("masking.n", getattr(built.get("masking"), "n", None)),
                       ("generation.mask_n", getattr(built.get("generation"), "mask_n", None))):  # fmt: skip
        if value is not None and value > slots:
            out.append(f"{key} = {value}: model {name} has {slots} expert slots at most (layers × experts); lower it")
    return out


def check_params(path: str | Path = "params.yaml", *, fast: bool = False) -> list[str]:
    """Every problem of a params file, one line each ([] when none). ``fast``: keys and names only."""
    params = load_params(path)
    problems = fast_problems(params)
    if problems or fast:
        return problems
    return full_problems(params)


def fields_of(module: str, cls: str) -> list[str]:
    """The fields of a dataclass by import (tests compare them with the source-read ones)."""
    return [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))]
