"""Start the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel on a model repository (tests, benchmarks).

The wheel (0.7.0: Triton 2.51, Python backend only) ships the server binary, its shared libraries
(``nvidia_pytriton.libs``) and one Python-backend stub per Python version. Its Python package pins
numpy < 2, so install it without dependencies (``pip install --no-deps nvidia-pytriton``): only its
files are used here, never its Python code. Setup, as measured on these machines:

1. a backend directory whose ``python/`` holds the wheel's Python backend plus the stub for this
   Python version (built under a temporary directory: the installed wheel is not modified);
2. ``LD_LIBRARY_PATH`` with the wheel's libraries;
3. ``tritonserver --model-repository R --backend-directory B`` on loopback ports chosen here.

The server runs as a child process with its log captured to a file, is polled for readiness for
a bounded time, and is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TritonUnavailable(RuntimeError):
    """The bundled tritonserver is not installed or not usable here."""


@dataclass(frozen=True)
class BundledTriton:
    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
            "triton_python_backend_stub"


def find_bundled_triton() -> BundledTriton:
    """The nvidia-pytriton wheel's server files, without importing its Python package."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("nvidia-pytriton is not installed: pip install --no-deps nvidia-pytriton==0.7.0")
    package = Path(next(iter(spec.submodule_search_locations)))
    found = BundledTriton(package / "tritonserver", package.parent / "nvidia_pytriton.libs")
    for path in (found.binary, found.stub, found.libs, found.root / "backends" / "python"):
        if not path.exists():
            raise TritonUnavailable(f"{path}: missing from the nvidia-pytriton installation")
    return found


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when this process dies (Linux prctl PR_SET_PDEATHSIG),
    so a killed test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """``with TritonServer(repo) as server:`` a ready server on ``server.http_port`` / ``grpc_port``."""

    def __init__(self, repository: str | os.PathLike[str], *, ready_timeout_s: float = 120.0,
                 log_path: str | os.PathLike[str] | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.repository = Path(repository)
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = extra_args
        self.env = dict(env or {})  # added to this process's environment (the Python stubs inherit it)
        self.bundle = find_bundled_triton()
        self._workdir = Path(tempfile.mkdtemp(prefix="vitmsn-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._last_log: str | None = None

    def _backends(self) -> Path:
        backends = self._workdir / "backends"
        shutil.copytree(self.bundle.root / "backends", backends, symlinks=True)
        shutil.copy2(self.bundle.stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def log(self, tail: int = 6000) -> str:
        """The end of the server's log (kept in memory once the server is stopped)."""
        if self.process is None and self._last_log is not None:
            return self._last_log[-tail:]
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def start(self) -> "TritonServer":
        backends = self._backends()
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        env = {**os.environ, **self.env}
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.bundle.libs), env.get("LD_LIBRARY_PATH")) if p)
        command = [str(self.bundle.binary), "--model-repository", str(self.repository),
                   "--backend-directory", str(backends),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                   "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                   "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
                   *self.extra_args]
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                            cwd=self._workdir, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, log = self.process.returncode, self.log()
                self.stop()
                raise TritonUnavailable(f"tritonserver exited with code {code} before it was ready; its log ends:\n{log}")
            if self.ready():
                return self
            time.sleep(0.25)
        log = self.log()
        self.stop()
        raise TritonUnavailable(f"tritonserver not ready after {self.ready_timeout_s:.0f}s; its log ends:\n{log}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the server (by its PID), SIGKILL after ``timeout_s``; returns its exit code."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its Python stubs
                process.wait(10)
        if process is not None:
            try:  # Python-backend stubs left behind by a killed server
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._last_log = self.log()
        shutil.rmtree(self._workdir, ignore_errors=True)  # the backend copy and the log, unless log_path is elsewhere
        return None if process is None else process.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
