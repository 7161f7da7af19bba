"""Progress for long steps, readable both on a terminal and in CI logs.

* :class:`Console`: where our own lines go (stderr, or the terminal saved by :mod:`vitmsn.core.third_party_output`
  while third-party output is captured into a log file); it remembers when it last wrote.
* :class:`Progress`: a counter. On a terminal the line is redrawn in place; otherwise (CI, pipes)
  a plain line is printed at most every ``interval`` seconds and once at the end.
* :class:`StageLog`: a list of stage results that prints each one as it is added, with the time
  it took and the process's peak RSS meanwhile (:class:`PeakRss`), and the whole table on request
  (:func:`stage_table`).
* :class:`Heartbeat`: a thread that prints what is running whenever nothing was printed for
  ``interval`` seconds, so a CI log never goes silent for long (:func:`activity` names the step).
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
import weakref
from typing import Any, Iterable, TextIO



class Console:
    """Our output stream (stderr unless pinned) and the time of its last line."""

    def __init__(self) -> None:
        self.pinned: TextIO | None = None
        self.last_write = time.monotonic()
        self.lock = threading.RLock()
        self.started = time.monotonic()
        self.step = ("", time.monotonic())  # what runs now, since when
        self.stages: list[Any] | None = None  # the StageLog of the run in progress

    @property
    def stream(self) -> TextIO:
        return self.pinned or sys.stderr

    def isatty(self) -> bool:
        try:
            return self.stream.isatty() and os.environ.get("CI") is None
        except (AttributeError, ValueError):
            return False

    def write(self, text: str) -> None:
        with self.lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (ValueError, OSError):  # a closed stream (interpreter shutting down): nothing to tell
                pass
            self.last_write = time.monotonic()

    def line(self, text: str) -> None:
        self.write(text + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


_CONSOLE = Console()


def console() -> Console:
    return _CONSOLE


def say(text: str) -> None:
    """One line of ours on the console."""
    _CONSOLE.line(text)


def activity(text: str) -> None:
    """Name the step now running (the heartbeat repeats it); printed at once as ``... text``."""
    if isinstance(_CONSOLE.stages, StageLog):  # the step before ends here; the next stage's peak RSS counts from here
        _CONSOLE.stages.close_step()
        _CONSOLE.stages._rss.start()
    _CONSOLE.step = (text, time.monotonic())
    _CONSOLE.line(f"[{_CONSOLE.elapsed():6.1f}s] ... {text}")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"


class Progress:
    def __init__(self, label: str, total: int | None, *, unit: str = "it", stream: TextIO | None = None,
                 interval: float = 10.0, enabled: bool = True) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream
        self.tty = (stream.isatty() and os.environ.get("CI") is None) if stream is not None else _CONSOLE.isatty()
        self.interval = 0.2 if self.tty else interval
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._emitted: int | None = None  # the count shown by the last line

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if rate >= 1 or self.done == 0:
            speed = f"{rate:.1f} {self.unit}/s" if self.done else "starting"
        else:  # slow units (a re-quantization try takes a minute): seconds per unit reads better than 0.0/s
            speed = f"{elapsed / self.done:.1f} s/{self.unit}"
        if self.total:
            pct = 100.0 * self.done / self.total
            left = ""
            if 0 < self.done < self.total and rate > 0:
                left = f", ~{_duration((self.total - self.done) / rate)} left"
            return f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:3.0f}%) {speed}, {elapsed:.1f}s elapsed{left}"
        return f"{self.label}: {self.done} {self.unit}, {speed}, {elapsed:.1f}s elapsed"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        final = self.total is not None and self.done >= self.total
        if self.enabled and not final and now - self._last >= self.interval:
            self._last = now
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        self._emitted = self.done
        text = self._line()
        if self.stream is not None:
            self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
            self.stream.flush()
        elif self.tty:
            _CONSOLE.write("\r" + text + ("\n" if final else ""))
        else:
            _CONSOLE.line(text)

    def close(self) -> None:
        if self.enabled and (self._emitted != self.done or self.tty):
            self._emit(final=True)
        self.enabled = False  # closing twice prints nothing more

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- stages -------------------------------------------------------------------------------------
def _status(stage: Any) -> str:
    """ok, skip, FAIL, or INCONCLUSIVE for a stage whose gates could not decide (``stage.verdict``)."""
    if stage.passed:
        return "ok"
    if str(stage.detail).startswith("skipped"):
        return "skip"
    return "INCONCLUSIVE" if getattr(stage, "verdict", "failed") == "inconclusive" else "FAIL"


def stage_line(stage: Any, seconds: float | None = None) -> str:
    """``[ok] name (1.2s): detail`` for a StageResult-like object (stage, passed, detail)."""
    status = _status(stage)
    took = f" ({seconds:.1f}s)" if seconds is not None else ""
    return f"[{status}] {stage.stage}{took}: {stage.detail}"


class PeakRss:
    """The process's peak resident memory within a window (since :meth:`start`), in bytes.

    Exact when the window set a new high-water mark for the process (``getrusage``'s ``ru_maxrss``, what
    ``/usr/bin/time -v`` reports); otherwise the largest RSS that one sampling thread (shared by every window)
    saw in the window, every ``_SAMPLE_SECONDS`` from ``/proc/self/statm``: a shorter peak can be missed."""

    def __init__(self) -> None:
        self._sampled = 0
        self._hwm_at_start = 0

    @staticmethod
    def high_water() -> int:
        """The process's high-water mark, or a finished child's when higher (the CPU INT8 quantization runs in one),
        as ``/usr/bin/time -v`` counts it."""
        return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def start(self) -> "PeakRss":
        global _SAMPLER
        with _SAMPLED_LOCK:
            _WINDOWS.add(self)
            self._sampled = self.current()
            self._hwm_at_start = self.high_water()
            if _SAMPLER is None and os.path.exists("/proc/self/statm"):
                _SAMPLER = threading.Thread(target=_sample_forever, name="vitmsn-peak-rss", daemon=True)
                _SAMPLER.start()
        return self

    def peak(self) -> int:
        hwm = self.high_water()
        with _SAMPLED_LOCK:
            sampled = max(self._sampled, self.current())
        return hwm if hwm > self._hwm_at_start else sampled


_SAMPLE_SECONDS = 0.05
_SAMPLED_LOCK = threading.Lock()
_WINDOWS: "weakref.WeakSet[PeakRss]" = weakref.WeakSet()
_SAMPLER: threading.Thread | None = None


def _sample_forever() -> None:
    while True:
        now = PeakRss.current()
        with _SAMPLED_LOCK:
            for window in _WINDOWS:
                window._sampled = max(window._sampled, now)
        time.sleep(_SAMPLE_SECONDS)


class StageLog(list):  # type: ignore[type-arg]
    """A list of stage results that prints each one when it is added, with the time since the one before and the
    peak RSS meanwhile. Stages added together (a step's checks, reported at its end) get none: their step's time
    covers its own work too (a conversion, a calibration). Where the time went is :attr:`steps`: every
    :func:`activity` step while the log is open, with its wall time and peak RSS."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__()
        self.seconds: list[float | None] = []
        self.peak_rss: list[int | None] = []
        self.steps: list[dict[str, Any]] = []
        self._mark = time.monotonic()
        self._rss = PeakRss().start()
        self._step_rss = PeakRss().start()
        self._opened, self._recorded = self._mark, 0.0
        _CONSOLE.stages = self
        self.extend(items)

    def close_step(self) -> None:
        """Record the step now running (begun while this log was open, not yet recorded); the next one's peak
        RSS counts from here."""
        text, since = _CONSOLE.step
        if text and since >= self._opened and since != self._recorded:
            self.steps.append({"step": text, "seconds": round(time.monotonic() - since, 2),
                               "peak_rss_mb": round(self._step_rss.peak() / 1e6)})
            self._recorded = since
        self._step_rss.start()

    def _announce(self, new: list[Any]) -> None:
        now = time.monotonic()
        self._mark = max(self._mark, _CONSOLE.step[1])  # a stage's time counts from its step's start
        peak = self._rss.peak()
        for i, stage in enumerate(new):
            took = now - self._mark if len(new) == 1 else None
            self.seconds.append(took)
            self.peak_rss.append(peak if len(new) == 1 else None)
            say(f"[{_CONSOLE.elapsed():6.1f}s] " + stage_line(stage, took))
        self._mark = now
        self._rss.start()

    def resources(self) -> list[dict[str, Any]]:
        """Each stage's seconds and peak RSS (MB), in run order: the manifest's record of where time and memory went."""
        return [{"stage": s.stage, "seconds": None if t is None else round(t, 2),
                 "peak_rss_mb": None if m is None else round(m / 1e6)}
                for s, t, m in zip(self, self.seconds, self.peak_rss)]

    def step_resources(self) -> list[dict[str, Any]]:
        """Every step of the run so far (the one running included) with its seconds and peak RSS (MB), in order."""
        self.close_step()
        return list(self.steps)

    def append(self, item: Any) -> None:
        super().append(item)
        self._announce([item])

    def extend(self, items: Iterable[Any]) -> None:
        items = list(items)
        super().extend(items)
        self._announce(items)

    def __iadd__(self, items: Iterable[Any]) -> "StageLog":  # type: ignore[override]
        self.extend(items)
        return self

    def insert(self, index: Any, item: Any) -> None:
        super().insert(index, item)
        self._announce([item])


def stage_table(stages: Iterable[Any]) -> str:
    """Every stage, one line each, in run order, with a closing count; a :class:`StageLog`'s also with each stage's
    time and peak RSS (blank for stages reported together), then the time and peak RSS of every step of the run."""
    seconds, peaks, steps = (getattr(stages, a, []) for a in ("seconds", "peak_rss", "steps"))
    stages = list(stages)
    width = max((len(s.stage) for s in stages), default=5)
    lines = [f"stages ({sum(s.passed for s in stages)} of {len(stages)} passed):"]
    status_width = max((len(_status(s)) for s in stages), default=4)
    if seconds:
        lines.append(f"  {'':{status_width}s} {'':{width}s}  {'time':>6s} {'peak RSS':>8s}")
    for i, s in enumerate(stages):
        status = _status(s)
        took = seconds[i] if i < len(seconds) else None
        peak = peaks[i] if i < len(peaks) else None
        columns = ""
        if seconds:
            columns = (f"{'' if took is None else _took(took):>6s} "
                       f"{'' if peak is None else f'{peak / 1e9:.1f} GB':>8s}  ")
        lines.append(f"  {status:{status_width}s} {s.stage:{width}s}  {columns}{s.detail}")
    if steps:
        lines.append("time by step (wall, peak RSS):")
        lines += [f"  {_took(st['seconds']):>6s} {st['peak_rss_mb'] / 1e3:6.1f} GB  {st['step']}" for st in steps]
    return "\n".join(lines)


def _took(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 90 else _duration(seconds)


# ---- heartbeat ----------------------------------------------------------------------------------
class Heartbeat:
    """While running, print ``... <step> (Ns)`` whenever the console was quiet for ``interval`` seconds."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vitmsn-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            if time.monotonic() - _CONSOLE.last_write >= self.interval:
                what, since = _CONSOLE.step
                say(f"[{_CONSOLE.elapsed():6.1f}s] ... {what or 'working'} (still running, {_duration(time.monotonic() - since)})")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
