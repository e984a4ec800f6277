"""Running a stage script: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from routelab.errors import RoutelabError


def run_stage(main: Callable[[], None]) -> None:
    try:
        main()
    except RoutelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def stage_args(doc: str, *required: str):
    """Parse a stage's command line: the ``required`` path options plus ``--params``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name in required:
        ap.add_argument(name, required=True)
    ap.add_argument("--params", default="params.yaml")
    return ap.parse_args()
