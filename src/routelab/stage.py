"""Running a stage script: bad input ends in one clear line, not a traceback; a summary line ends it.

    def main() -> str:
        args = stage_args(__doc__, "--model", "--out")
        ...
        return f"aals[{args.model}]: selected layers [1]"   # printed with the elapsed time

    if __name__ == "__main__":
        run_stage(main, "aals")
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from routelab.errors import RoutelabError


def run_stage(main: Callable[[], str | None], name: str | None = None) -> None:
    """Run a stage's ``main``; print its summary line with the elapsed time, or one error line."""
    t0 = time.perf_counter()
    label = f"stage {name}: " if name else ""
    try:
        summary = main()
    except RoutelabError as exc:
        print(f"{label}error: {exc}", file=sys.stderr)
        sys.exit(2)
    if summary:
        print(f"{summary} ({time.perf_counter() - t0:.1f} s)", flush=True)


def stage_args(doc: str, *required: str, optional: tuple[str, ...] = ()):
    """Parse a stage's command line: the ``required`` path options, ``optional`` ones, and ``--params``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name in required:
        ap.add_argument(name, required=True)
    for name in optional:
        ap.add_argument(name, default=None)
    ap.add_argument("--params", default="params.yaml")
    return ap.parse_args()
