"""ModelOpt quirks, handled in one place: its logging.

:func:`captured_modelopt_logs`: ModelOpt's INFO chatter kept off the terminal, its decisions captured.

ModelOpt (``modelopt.onnx``) installs its own stream handlers and logs every node it skips at
INFO. We need some of those lines as data (which nodes AutoCast kept in FP32, and why) but not
on the user's terminal, so :func:`captured_modelopt_logs` raises its handlers to WARNING for the
duration of a call and records the messages. ModelOpt's handlers and ONNX Runtime's calibration
progress write to stdout; inside the block stdout goes to stderr, so a command's stdout stays
machine-readable.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

MODELOPT_LOGGERS = ("modelopt.onnx", "modelopt.onnx.autocast", "modelopt.onnx.quantization")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_modelopt_logs(verbose: bool = False) -> Iterator[list[str]]:
    """Yield a list that receives every ModelOpt log message (INFO and up) made inside the block."""
    collect = _Collect()
    saved: list[tuple[logging.Handler, int, object]] = []
    saved_levels: list[tuple[logging.Logger, int]] = []
    from vitmsn.core import third_party_output

    # While an export captures third-party output into export.log, ModelOpt's INFO lines belong there in full;
    # otherwise they are kept off the terminal unless verbose.
    quiet = not verbose and not third_party_output.active()
    for name in MODELOPT_LOGGERS:
        lg = logging.getLogger(name)
        saved_levels.append((lg, lg.level))
        for h in lg.handlers:
            stream = getattr(h, "stream", None)
            saved.append((h, h.level, stream))
            if quiet:
                h.setLevel(max(h.level, logging.WARNING))
            if isinstance(h, logging.StreamHandler) and stream in (sys.stdout, sys.__stdout__):
                h.setStream(sys.stderr)
    # AutoCast's modules all log through "modelopt.onnx.autocast"; quantization is told its level
    # by argument (its entry point reconfigures the handlers on every call).
    autocast = logging.getLogger("modelopt.onnx.autocast")
    autocast.setLevel(logging.INFO)  # restored below with the others
    autocast.addHandler(collect)
    parent = logging.getLogger("modelopt.onnx")
    propagate, parent_propagate = autocast.propagate, parent.propagate
    # ModelOpt's own handlers already write every line: propagating too would print each one twice
    autocast.propagate = parent.propagate = False
    try:
        with contextlib.redirect_stdout(sys.stderr):  # ModelOpt and ORT print progress to stdout
            yield collect.messages
    finally:
        autocast.removeHandler(collect)
        autocast.propagate, parent.propagate = propagate, parent_propagate
        for h, level, stream in saved:
            h.setLevel(level)
            if isinstance(h, logging.StreamHandler) and stream is not None and h.stream is not stream:
                h.setStream(stream)  # type: ignore[arg-type]
        for lg, level in saved_levels:
            lg.setLevel(level)
