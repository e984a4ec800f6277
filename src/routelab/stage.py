"""Running a stage script: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from routelab.errors import RoutelabError


def run_stage(main: Callable[[], None]) -> None:
    try:
        main()
    except RoutelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
