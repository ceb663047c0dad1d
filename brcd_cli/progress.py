"""Progress of long loops (cache builds, epochs, encoding): items/s and time left.

A user watching a terminal gets a live rich bar on stderr; anything else
(a log file, CI, a caller's own log function) gets one line every
``every`` seconds through the log function, so a long step never runs
silently and a short one prints nothing extra. A log function opts into the
live bar by carrying ``live_progress = True`` (the CLI's does), so library
callers and quiet workers never get one they did not ask for.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Counts ``total`` units of work; ``advance(n)`` after each part, ``close()`` (or a ``with`` block) at the end."""

    def __init__(self, label: str, total: int, unit: str = "images", log: Callable[[str], None] = print,
                 every: float = 15.0) -> None:
        self.label, self.total, self.unit, self.log, self.every = label, max(int(total), 0), unit, log, every
        self.done = 0
        self.start = self._last = time.monotonic()
        self._bar: Optional[Any] = None
        self._task: Any = None
        if getattr(log, "live_progress", False) and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total, rate="")

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``label: done/total units, R units/s, T left`` (the periodic log line)."""
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _duration(left) if left != float("inf") else "?"
        return f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.0f} {self.unit}/s, {eta} left"

    def advance(self, n: int = 1) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate:.0f} {self.unit}/s")
            return
        now = time.monotonic()
        if now - self._last >= self.every and self.done < self.total:
            self._last = now
            self.log(self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on Ctrl-C or an error, so a live bar never outlives its loop
