"""The project's own wiring cannot drift: dvc.yaml deps follow the imports, and every params key
that the library names (in an error hint, a docstring, a comment string) exists in params.yaml.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "routelab"
# routelab/__init__.py holds only the version and a usage docstring; listing it in every
# stage's deps would re-run the whole pipeline on a docstring edit.
IGNORED = {PKG / "__init__.py"}


def _module_file(dotted: str) -> Path | None:
    """src/routelab/a/b.py or src/routelab/a/b/__init__.py for "routelab.a.b"."""
    base = SRC.joinpath(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Dotted routelab modules imported anywhere in ``path`` (function-level imports too)."""
    tree = ast.parse(path.read_text())
    package = ""  # stage scripts use absolute imports only
    if SRC in path.parents:
        here = ".".join(path.relative_to(SRC).with_suffix("").parts)
        package = here.rsplit(".__init__", 1)[0] if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("routelab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .base import x / from . import x
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not mod.startswith("routelab"):
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from routelab import plots`
    return found


def import_closure(script: Path) -> set[Path]:
    """Every routelab source file executed when ``script`` is imported (parents' __init__ too)."""
    todo, seen = [script], set()
    while todo:
        f = todo.pop()
        for dotted in _imports(f):
            parts = dotted.split(".")
            for i in range(2, len(parts) + 1):  # routelab.a, routelab.a.b, ...
                mf = _module_file(".".join(parts[:i]))
                if mf is not None and mf not in seen:
                    seen.add(mf)
                    todo.append(mf)
    return seen - IGNORED


def _stages() -> dict[str, dict]:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return {name: st.get("do", st) for name, st in dvc["stages"].items()}


ENGINE_FINGERPRINT = ROOT / "data" / "engine.json"  # stage engine's output: stands for its deps (see dvc.yaml)


def _deps(stage: str) -> list[Path]:
    """A stage's deps with data/engine.json expanded into the engine stage's library deps."""
    st, stages = _stages()[stage], _stages()
    deps = [ROOT / d for d in st.get("deps", []) if "${" not in d]
    if ENGINE_FINGERPRINT in [ROOT / d.replace("${item}", "x") for d in st.get("deps", [])]:
        deps += [ROOT / d for d in stages["engine"]["deps"] if d != "stages/engine.py"]
    return deps


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_cover_every_imported_routelab_module(stage):
    st = _stages()[stage]
    m = re.search(r"python -m stages\.(\w+)", st["cmd"])
    assert m, f"stage {stage}: cmd does not run a stages/ script: {st['cmd']}"
    script = ROOT / "stages" / f"{m.group(1)}.py"
    deps = _deps(stage)
    assert script in deps, f"stage {stage}: its script {script.relative_to(ROOT)} is not in its deps"
    missing = sorted(
        str(f.relative_to(ROOT)) for f in import_closure(script)
        if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage {stage}: deps miss modules its script imports: {missing}"
    closure = import_closure(script)
    if stage == "engine":  # its deps are what it fingerprints (test_the_engine_fingerprint_lists_exactly_…)
        return
    extra = sorted(  # a library dep the script does not import would re-run the stage for nothing
        str(d.relative_to(ROOT)) for d in deps
        if (ROOT / "src" / "routelab") in d.parents and not any(f == d or d in f.parents for f in closure)
    )
    assert not extra, f"dvc.yaml stage {stage}: deps name library modules its script does not import: {extra}"
    # data/, metrics/ and plots/ are pipeline outputs: they exist once the stages that write them ran
    stale = [str(d.relative_to(ROOT)) for d in deps if not d.exists() and d.relative_to(ROOT).parts[0] not in ("data", "metrics", "plots")]
    assert not stale, f"dvc.yaml stage {stage}: deps that do not exist: {stale}"


def test_the_engine_fingerprint_lists_exactly_the_conditions_engine():
    """Stage `engine` lists the import closure of routelab.interventions, no more, no less, so the
    stages that depend on data/engine.json re-run exactly when a module they import through it changes."""
    deps = [ROOT / d for d in _stages()["engine"]["deps"] if d != "stages/engine.py"]
    closure = import_closure(PKG / "interventions" / "__init__.py") | {PKG / "interventions" / "__init__.py"}
    covered = {f for f in closure if any(f == d or d in f.parents for d in deps)}
    assert covered == closure, sorted(str(f.relative_to(ROOT)) for f in closure - covered)
    files = {f for d in deps for f in ([d] if d.is_file() else d.rglob("*.py"))}
    assert files == closure, sorted(str(f.relative_to(ROOT)) for f in files ^ closure)


@pytest.mark.parametrize("script", sorted((ROOT / "stages").glob("*.py")) + sorted((ROOT / "bench").glob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_import_routelab_before_torch_numpy_or_pyarrow(script):
    """`import routelab` pins the compute path (routelab.compute) before torch, numpy and pyarrow read
    their CPU settings: a script that imports a numeric library first would run off the pinned path."""
    numeric = {"torch", "numpy", "pyarrow", "polars", "scipy", "transformers", "sklearn", "pandas", "datasets"}
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            top = {n.split(".")[0] for n in names}
            if "routelab" in top:
                return
            assert not top & numeric, f"{script.relative_to(ROOT)}: imports {top & numeric} before routelab"
    pytest.fail(f"{script.relative_to(ROOT)} never imports routelab")


def test_import_closure_follows_packages_and_relative_imports():
    # a known chain: routing imports adapters (a package whose __init__ imports every family)
    closure = import_closure(PKG / "routing.py")
    assert PKG / "adapters" / "__init__.py" in closure
    assert PKG / "adapters" / "olmoe.py" in closure and PKG / "adapters" / "base.py" in closure
    assert PKG / "tables.py" in closure


# ---------------------------------------------------------------------------------------
# Params keys named by the library exist
# ---------------------------------------------------------------------------------------

FILE_SUFFIXES = {"py", "json", "parquet", "yaml", "png", "html", "md", "txt", "csv", "jsonl"}


def _strings(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
    return out


def _resolve(params: dict, parts: list[str]) -> bool:
    node = params
    for p in parts:
        if isinstance(node, dict) and p.startswith("<"):  # a placeholder such as models.<name>
            return any(_resolve(v, parts[parts.index(p) + 1 :]) for v in node.values()) if parts[-1] != p else True
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def named_params_keys(params: dict) -> list[tuple[str, str]]:
    """(file, key) for every `section.key…` string in the library whose section is a params section."""
    sections = "|".join(sorted(map(re.escape, params), key=len, reverse=True))
    # not preceded by a word, path or module prefix; not followed by "(" (a call: testbed.train(…))
    pattern = re.compile(rf"(?<![\w./-])({sections})((?:\.(?:[a-z_][a-z0-9_]*|<\w+>))+)(?![\w(])")
    found = []
    for f in sorted(PKG.rglob("*.py")) + sorted((ROOT / "stages").glob("*.py")):
        for s in _strings(f):
            for m in pattern.finditer(s):
                key = m.group(1) + m.group(2)
                if key.rsplit(".", 1)[-1] in FILE_SUFFIXES:
                    continue
                found.append((str(f.relative_to(ROOT)), key))
    return found


def test_every_params_key_the_library_names_exists():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    named = named_params_keys(params)
    assert len(named) > 20, "the scan should find the params keys the error hints name"
    missing = sorted({(f, k) for f, k in named if not _resolve(params, k.split("."))})
    assert not missing, f"params keys named in the library but absent from params.yaml: {missing}"


def test_the_params_key_scan_catches_a_wrong_key(tmp_path):
    params = {"profile": {"skip_first_token": False}, "models": {"a": {"path": "x"}}}
    assert _resolve(params, ["profile", "skip_first_token"])
    assert not _resolve(params, ["profile", "skip_first"])
    assert _resolve(params, ["models", "<name>", "path"]) and not _resolve(params, ["models", "<name>", "paht"])


def test_params_yaml_is_written_the_way_dvc_writes_it(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's own YAML writer: in that form an experiment
    changes exactly the lines of the keys it sets (no cosmetic diff on `dvc exp apply`)."""
    import shutil

    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", copy)
    with modify_yaml(copy) as data:
        data["arr"]["beta"] = 0.25
    before, after = (ROOT / "params.yaml").read_text().splitlines(), copy.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 1 and changed[0][1].startswith("  beta: 0.25"), changed
