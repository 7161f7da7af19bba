"""SIGINT and SIGTERM as one exception, raised only where unwinding is safe.

A command calls :func:`install` first thing. From then on SIGINT and SIGTERM raise
:class:`Interrupted` (a ``KeyboardInterrupt``, so ``except Exception`` blocks let it through and
every ``finally`` runs: staging directories and temporary files are removed), and the CLI turns
it into exit code 130 (SIGINT) or 143 (SIGTERM).

Some places must not be unwound: a C++ extension's import (pybind11 registers enums by calling
back into Python; a ``KeyboardInterrupt`` raised there ends in ``std::terminate``, exit 134, as
ModelOpt's import did) and the final renames of an export. Inside :func:`deferred` a signal is
only recorded, and raised when the outermost block ends; inside :func:`shielded` it is recorded
and dropped (the work it would have stopped is already complete).

Standard library only: the runtime's commands use it too.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
from types import FrameType
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """The process got SIGINT or SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(exc: BaseException) -> int:
    """130 for SIGINT (and a plain KeyboardInterrupt), 143 for SIGTERM."""
    if isinstance(exc, Interrupted):
        return exc.exit_code
    return 128 + _state.received if _state.received is not None else EXIT_CODES[signal.SIGINT]


def received() -> int | None:
    """The signal this process got, if any. Third-party code may turn the exception raised for it into
    another one (torch.onnx.export wraps what interrupts its lazy imports in TorchExportError): whoever
    sees an unexpected error while this is set reports the interrupt, not the error."""
    return _state.received


def raise_if_received() -> None:
    """Raise :class:`Interrupted` when a signal arrived, even one that some library swallowed; called
    before work is committed, so a run that was interrupted never completes as if it had not been."""
    if _state.received is not None:
        raise Interrupted(_state.received)


class _State:
    installed = False
    depth = 0  # nesting of deferred()/shielded() blocks
    dropping = 0  # nesting of shielded() blocks
    pending: int | None = None
    received: int | None = None  # the first signal this process got, even if third-party code swallowed it


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.received is None:
        _state.received = signum
    if _state.depth:
        if _state.pending is None:
            _state.pending = signum
        if _state.dropping:
            log.warning("%s received while finishing; the run completes", signal.Signals(signum).name)
        return
    raise Interrupted(signum)


def install() -> None:
    """SIGINT/SIGTERM raise :class:`Interrupted` from now on (main thread only; an ignored signal stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is signal.SIG_IGN:  # e.g. started with nohup or as a background job
            continue
        signal.signal(signum, _handler)
    _state.installed = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the outermost deferred block ends, then raise :class:`Interrupted`."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None:
            signum, _state.pending = _state.pending, None
            raise Interrupted(signum)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Record and drop SIGINT/SIGTERM while the block runs (it finishes work that is already complete)."""
    _state.depth += 1
    _state.dropping += 1
    try:
        yield
    finally:
        _state.dropping -= 1
        _state.depth -= 1
        if _state.depth == 0:
            _state.pending = None


def import_deferred(names: Iterable[str]) -> None:
    """Import ``names`` (modules that load C++ extensions) with signals held; a missing one is skipped
    (the step that needs it reports that)."""
    with deferred():
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
