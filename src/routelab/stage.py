"""Running a stage script: bad input ends in one clear line, not a traceback; a summary line ends it.

    def main() -> str:
        args = stage_args(__doc__, "--model", "--out", outputs=("--out",))
        ...
        return f"aals[{args.model}]: selected layers [1]"   # printed with the elapsed time

    if __name__ == "__main__":
        run_stage(main, "aals")

Exit codes: 0 done, 2 bad input (one line on stderr: what, which input, what to do), 130
interrupted (Ctrl-C; one line saying what was kept).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

from routelab import compute
from routelab.errors import RoutelabError
from routelab.io import check_writable, write_json

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def run_stage(main: Callable[[], str | None], name: str | None = None) -> None:
    """Run a stage's ``main``; print its summary line with the elapsed time, or one error line."""
    t0 = time.perf_counter()
    label = f"stage {name}: " if name else ""
    try:
        summary = main()
    except RoutelabError as exc:
        print(f"{label}error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as exc:
        print(f"{label}interrupted: {interrupted_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if summary:  # the compute note is empty on the pinned path (routelab.compute)
        print(f"{summary} ({time.perf_counter() - t0:.1f} s{compute.override_note()})", flush=True)


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """What an interrupted run kept: the message a long loop attached (extraction: its shards and
    how to resume), else what holds for every routelab output."""
    return str(exc) or "every output is written whole or not at all, so none is half-written; run again to redo"


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit code 2), like every other routelab error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def stage_args(
    doc: str, *required: str, optional: tuple[str, ...] = (), outputs: tuple[str, ...] = (),
    output_dirs: tuple[str, ...] = (),
):
    """Parse a stage's command line: the ``required`` path options, ``optional`` ones, and ``--params``.

    ``outputs`` (files) and ``output_dirs`` (folders), among the options, are checked to be
    writable now, before any input is read or model loaded (routelab.io.check_writable).
    """
    ap = OneLineParser(description=doc.splitlines()[0])
    for name in required:
        ap.add_argument(name, required=True)
    for name in optional:
        ap.add_argument(name, default=None)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    for flag in (*outputs, *output_dirs):
        path = getattr(args, flag.lstrip("-").replace("-", "_"))
        if path is not None:
            check_writable(path, flag, folder=flag in output_dirs)
    return args


def write_metrics(path: str | Path, metrics: dict) -> None:
    """A stage's metrics file, with the compute path its numbers were made on (routelab.compute.label)."""
    write_json(path, {**metrics, "compute": compute.label()})


def format_p(p: float | None) -> str:
    """A p-value for a summary line: three decimals (0.000999… → 0.001, 0.0234 → 0.023), two
    significant digits below 0.0005 (4.2e-05); ``n/a`` when there is none."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if round(p, 3) > 0 or p == 0 else f"{p:.2g}"
