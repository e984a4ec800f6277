"""Atomic file output: write to a temporary file beside the target, then rename.

A killed stage never leaves a half-written output that DVC or a reader could mistake for a
finished one. ``check_writable`` refuses an output path before any compute (a folder where a
file is expected, a parent that is a file, a place that cannot be written), and
``atomic_paths`` writes a set of outputs all or nothing. A resumable output (extraction) keeps
its finished shards in ``<out>.parts/`` with a manifest (``parts_folder``, ``parts_manifest``,
``check_resumable_output``). This module imports no torch: the command line checks every
path with it in a fraction of a second, before a model library loads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from routelab.errors import RoutelabError


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=suffix or target.suffix or ".tmp"
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result is an ordinary folder
    try:
        yield tmp
        for f in tmp.rglob("*"):  # some writers (safetensors) create 0600 files
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_paths(*targets: str | Path) -> Iterator[list[Path]]:
    """Temporary paths for several outputs; renamed onto their targets only if the block succeeds.

    Every file is written before any is renamed, so an error while writing leaves none of them.
    """
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(t)) for t in targets]


def check_writable(target: str | Path, flag: str, *, folder: bool = False) -> None:
    """Refuse, before any compute, an output path that could not be written.

    ``flag`` is how the user named it (``--out``, ``--items``); ``folder``: the output is a
    folder (a file there is refused) rather than a file (a folder there is refused). Nothing is
    created: the nearest existing parent is probed with a temporary file, removed at once.
    """
    target = Path(target)
    if target.is_dir() and not folder:
        raise RoutelabError(f"{flag} {target} is a folder: give the path of a file to write")
    if target.exists() and not target.is_dir() and folder:
        raise RoutelabError(f"{flag} {target} is a file: give the path of a folder to write")
    parent = target.parent
    while not parent.exists():  # the folders still to create: the nearest existing one decides
        parent = parent.parent
    if not parent.is_dir():
        raise RoutelabError(f"{flag} {target}: {parent} is a file, not a folder: choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".routelab-write-check-")
    except OSError as exc:
        raise RoutelabError(
            f"{flag} {target}: cannot write in {parent} ({exc.strerror}): choose a writable place"
        ) from None
    os.close(fd)
    os.unlink(probe)


PARTS_MANIFEST = "manifest.json"  # in <out>.parts/: what the shards were computed from (a fingerprint)


def parts_folder(out: str | Path) -> Path:
    """Where the finished shards of a resumable output ``out`` wait: ``<out>.parts/``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def parts_manifest(parts: Path) -> dict | None:
    """The manifest of a routelab shards folder; None when ``parts`` is not one (a file, other
    files inside, no manifest with a fingerprint)."""
    if not parts.is_dir():
        return None
    ours = all(  # dot-names: temporary files a killed atomic write left
        f.name == PARTS_MANIFEST or f.name.startswith(("chunk-", ".chunk-", f".{PARTS_MANIFEST}."))
        for f in parts.iterdir()
    )
    try:
        manifest = json.loads((parts / PARTS_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if ours and isinstance(manifest, dict) and "fingerprint" in manifest else None


def check_resumable_output(out: str | Path, flag: str) -> None:
    """:func:`check_writable`, and refuse a ``<out>.parts/`` that routelab did not make (it would
    otherwise be deleted or mixed in)."""
    check_writable(out, flag)
    parts = parts_folder(out)
    if parts.exists() and parts_manifest(parts) is None:
        raise RoutelabError(
            f"{flag} {out}: {parts} exists and was not made by routelab (no manifest of its own): "
            "move or delete it, then run again"
        )


def write_parquet(df: Any, target: str | Path) -> None:
    """Write a polars DataFrame as Parquet, atomically."""
    with atomic_path(target) as tmp:
        df.write_parquet(tmp)


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target``, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline (stable diffs for `dvc metrics diff`)."""
    write_text(target, json_text(obj))


def json_text(obj: Any) -> str:
    """The text :func:`write_json` writes (numpy numbers and paths as plain JSON)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_table(source: str | Path | Any, what: str, stage: str) -> tuple[Any, str]:
    """(polars DataFrame, display name) from a Parquet path or a DataFrame given as is.

    A missing file, a folder or a file that is not Parquet is an error that names it and the
    stage that writes it.
    """
    if isinstance(source, pl.DataFrame):
        return source, f"{what} table"
    p = Path(source)
    if not p.exists():
        raise RoutelabError(f"{what} file {p} not found: run the `{stage}` stage first")
    if p.is_dir():
        raise RoutelabError(f"{what} file {p} is a folder: give the Parquet file the `{stage}` stage writes")
    try:
        return pl.read_parquet(p, glob=False), str(p)  # glob=False: brackets in a file name are text
    except (pl.exceptions.PolarsError, OSError):  # polars' own message is a multi-line query plan
        raise RoutelabError(
            f"{what} file {p} is not a readable Parquet file: give the file the `{stage}` stage writes"
        ) from None
