"""One progress display for every long loop (training, extraction, scoring, generation, conditions).

    from routelab.progress import progress
    with progress("extract[diffuse]", total=len(prompts), unit="prompts") as bar:
        for chunk in chunks:
            ...
            bar.advance(len(chunk))
        bar.update(loss=0.93)          # optional extra fields, shown after the counts

On a terminal it is a rich bar with counts, elapsed time and ETA. When stderr is not a
terminal (CI logs, ``dvc repro | tee``), a rich bar would print nothing useful, so a plain line
``extract[diffuse]: 1024/3856 prompts (27 %), 12 s, ETA 31 s`` is printed every
``every_s`` seconds and once at the end. ``enabled=False`` shows nothing (tests, nested loops).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 30.0  # seconds between plain progress lines when stderr is not a terminal


class _Bar:
    """What ``progress`` yields: ``advance(n)`` and ``update(**fields)``."""

    def __init__(self, description: str, total: int | None, unit: str, mode: str, every_s: float, done: int = 0):
        self.description, self.total, self.unit, self.mode = description, total, unit, mode
        self.done = self.start = done  # `start`: done before this run (a resume), not in the rate
        self.fields: dict[str, Any] = {}
        self.every_s = every_s
        self.t0 = self._last = time.perf_counter()
        self._rich: Progress | None = None
        self._task: Any = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.update(self._task, advance=n, fields=self._fields_text())
        elif self.mode == "plain" and time.perf_counter() - self._last >= self.every_s:
            self._plain_line()

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self._rich is not None:
            self._rich.update(self._task, fields=self._fields_text())

    def _fields_text(self) -> str:
        parts = []
        for k, v in self.fields.items():
            parts.append(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}")
        return "  ".join(parts)

    def _plain_line(self) -> None:
        self._last = now = time.perf_counter()
        elapsed = now - self.t0
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        pct = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        eta = ""
        if self.total and self.start < self.done < self.total:
            eta = f", ETA {elapsed * (self.total - self.done) / (self.done - self.start):.0f} s"
        extra = f", {self._fields_text()}" if self.fields else ""
        print(f"{self.description}: {count} {self.unit}{pct}, {elapsed:.0f} s{eta}{extra}",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    unit: str = "",
    enabled: bool = True,
    every_s: float = PLAIN_EVERY_S,
    done: int = 0,
) -> Iterator[_Bar]:
    """A progress display for one loop (module docstring); removed when the block ends.

    ``done``: units finished before this run (a resumed extraction): counted, not in the ETA.
    """
    mode = "off" if not enabled else ("rich" if sys.stderr.isatty() else "plain")
    bar = _Bar(description, total, unit, mode, every_s, done)
    if mode != "rich":
        try:
            yield bar
        finally:
            if mode == "plain" and bar.done > bar.start:
                bar._plain_line()
        return
    rich = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit, markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[fields]}", markup=False),
        transient=True,
    )
    with rich:
        bar._rich = rich
        bar._task = rich.add_task(description, total=total, completed=done, fields="")
        yield bar
