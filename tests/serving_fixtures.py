"""Fixtures and helpers for the serving tests (Triton repository, `vitmsn serve`).

Test modules import the fixture by name (``from serving_fixtures import serve_process``);
the artifacts and images come from ``conftest.py`` (``demo_artifacts``, ``heldout_images``).
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Iterator

import numpy as np
import pytest
from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48), quality: int = 90) -> bytes:
    """A real JPEG of random content."""
    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class ServerProcess:
    """`vitmsn serve` in a subprocess on 127.0.0.1 with an ephemeral port (``--port 0``).

    A thread reads its output all along (so a chatty server never blocks on a full pipe) and
    spots the "listening on URL" line printed once the server accepts connections.
    """

    def __init__(self, args: list[str], startup_timeout: float = 60.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-c", "from vitmsn.cli import main; main()", "serve", *args,
                   "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or not self.url:
            self.proc.kill()
            self._reader.join(10)
            raise AssertionError("vitmsn serve did not start:\n" + self.output)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match and not self.url:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()  # the process ended

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM (graceful shutdown), then wait; returns (exit code, everything it printed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("vitmsn serve did not stop within the timeout after SIGTERM:\n" + self.output) from None
        self._reader.join(10)
        return code, self.output


@pytest.fixture
def serve_process() -> Iterator[type[ServerProcess]]:
    """A factory; every server it started is stopped at the end of the test."""
    started: list[ServerProcess] = []

    class _Tracked(ServerProcess):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)  # type: ignore[arg-type]
            started.append(self)

    yield _Tracked
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
