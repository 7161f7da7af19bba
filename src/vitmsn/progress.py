"""Progress for long steps, readable both on a terminal and in CI logs.

On a terminal the line is redrawn in place; otherwise (CI, pipes) a plain line is printed at
most every ``interval`` seconds and at the end, so logs stay short. Output goes to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO



class Progress:
    def __init__(self, label: str, total: int | None, *, unit: str = "it", stream: TextIO | None = None,
                 interval: float = 10.0, enabled: bool = True) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and os.environ.get("CI") is None
        self.interval = 0.2 if self.tty else interval
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            return (f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:3.0f}%) "
                    f"{rate:.1f} {self.unit}/s, {elapsed:.1f}s elapsed, ~{eta:.0f}s left")
        return f"{self.label}: {self.done} {self.unit}, {rate:.1f} {self.unit}/s, {elapsed:.1f}s elapsed"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self._line() + ("\n" if final else ""))
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._emit(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
