"""Third-party output of an export run, kept off the terminal and in a log file.

ModelOpt's tqdm bars and INFO lines, ONNX Runtime's C++ warnings and calibration prints
("Collecting tensor data"), onnx_ir's INFO logging and Python warnings all go to ``export.log``
in the artifacts directory (named in the manifest's ``logs`` entry with its SHA-256). Our own
lines go to the terminal through :func:`vitmsn.core.progress.console`, which is pinned to a copy of
the original stderr for the duration.

The capture works at the file-descriptor level (``os.dup2`` of fds 1 and 2), so output written by
C/C++ code is caught too, and replaces ``sys.stdout``/``sys.stderr``; every logger's records at
INFO and above are written to the file as well. :func:`stop` restores everything and is
idempotent; it must run before the manifest is written (the log's hash is final then).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vitmsn.core.progress import console

LOG_FILE = "export.log"


@dataclass
class _Capture:
    path: Path
    log: TextIO
    saved_fds: dict[int, int]
    saved_streams: tuple[TextIO, TextIO]
    handler: logging.Handler
    root_level: int
    vitmsn_level: int
    pinned_before: TextIO | None
    terminal: TextIO | None  # our own dup of the terminal fd, closed on stop


_active: _Capture | None = None


def active() -> bool:
    return _active is not None


def _real_fd(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation, OSError):
        return None


def start(path: Path) -> Path:
    """Send third-party output to ``path`` (truncated) until :func:`stop`."""
    global _active
    stop()
    path = Path(path)
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (ValueError, OSError):
            pass
    con = console()
    pinned_before = con.pinned
    terminal = None
    if con.pinned is None:
        if _real_fd(sys.stderr) == 2:  # our lines keep going where stderr went
            terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
            con.pinned = terminal
        else:  # a replaced sys.stderr (click's CliRunner, pytest's capsys): keep writing to that object
            con.pinned = sys.stderr
    log = open(path, "w", buffering=1, encoding="utf-8", errors="replace")
    saved_fds = {}
    for fd in (1, 2):
        try:
            saved_fds[fd] = os.dup(fd)
            os.dup2(log.fileno(), fd)
        except OSError:
            pass
    saved_streams = (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = log
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root_level = root.level
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)
    ours = logging.getLogger("vitmsn")
    vitmsn_level = ours.level
    ours.setLevel(logging.INFO)  # our INFO lines reach the file; the terminal shows them with -v
    _active = _Capture(path, log, saved_fds, saved_streams, handler, root_level, vitmsn_level, pinned_before, terminal)
    return path


def stop() -> Path | None:
    """Restore stdout/stderr and logging; return the log's path (None when nothing was captured)."""
    global _active
    cap, _active = _active, None
    if cap is None:
        return None
    try:
        cap.log.flush()
    except (ValueError, OSError):
        pass
    for fd, saved in cap.saved_fds.items():
        os.dup2(saved, fd)
        os.close(saved)
    sys.stdout, sys.stderr = cap.saved_streams
    root = logging.getLogger()
    root.removeHandler(cap.handler)
    root.setLevel(cap.root_level)
    logging.getLogger("vitmsn").setLevel(cap.vitmsn_level)
    cap.log.close()
    con = console()
    con.pinned = cap.pinned_before
    if cap.terminal is not None:
        try:
            cap.terminal.flush()
            cap.terminal.close()
        except (ValueError, OSError):
            pass
    return cap.path


def manifest_entry(path: Path) -> dict[str, Any]:
    """The manifest's ``logs`` entry for a finished log file."""
    from vitmsn.runtime.manifest import sha256_file

    return {"file": path.name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            "content": "third-party output of the export (ModelOpt, ONNX Runtime, onnx_ir, warnings)"}
