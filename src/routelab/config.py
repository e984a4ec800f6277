"""params.yaml sections → small dataclasses; unknown keys and wrong types are errors.

Each stage reads its own section::

    cfg = section(ProfileParams, params["profile"], "profile")
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from routelab.errors import RoutelabError

T = TypeVar("T")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml (or another YAML file) into a dict."""
    p = Path(path)
    if not p.exists():
        raise RoutelabError(f"params file {p} not found: run from the project root or pass --params")
    with p.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise RoutelabError(f"{p} must hold a mapping of sections, found {type(data).__name__}")
    return data


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except RoutelabError:
                continue
        raise RoutelabError(f"{where}: {value!r} is not a {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RoutelabError(f"{where}: expected a mapping, found {value!r}")
        return section(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RoutelabError(f"{where}: expected a list, found {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise RoutelabError(f"{where}: expected a mapping, found {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {k: _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RoutelabError(f"{where}: expected {tp.__name__}, found {value!r} ({type(value).__name__})")
    return value


def section(cls: type[T], values: dict[str, Any] | None, name: str) -> T:
    """Build dataclass ``cls`` from a params section, rejecting unknown keys and wrong types."""
    values = values or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise RoutelabError(
                f"params section '{name}': unknown key '{key}'.{hint} Known keys: {', '.join(fields)}"
            )
        kwargs[key] = _check_type(value, hints[key], f"{name}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise RoutelabError(f"params section '{name}': {exc}") from None


def check_choice(where: str, value: str, allowed: tuple[str, ...]) -> None:
    """A string option must be one of ``allowed``; the error suggests the nearest."""
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise RoutelabError(f"{where}: unknown value '{value}'.{hint} Available: {', '.join(allowed)}")
