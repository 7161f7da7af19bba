"""Fixtures for tests that run vitmsn's TensorRT code against the SIMULATED CUDA/TensorRT runtimes
(tests/trt_simulation). A simulation test is never GPU evidence: it shows what vitmsn asks of
TensorRT and CUDA, checked against their documented contracts, not that a GPU runs it."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest

from trt_simulation import DEFAULT_GPU, SimState, add_simulated_engine, install


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimState:
    """The simulated runtimes with one simulated GPU (SM 8.6); at teardown nothing may be leaked and
    nothing may have touched memory it does not own."""
    monkeypatch.setenv("VITMSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    state = install(monkeypatch, gpus=(DEFAULT_GPU,))
    yield state
    gc.collect()
    from vitmsn.runtime.backends import device

    device.cuda_gpus.cache_clear()
    assert state.violations == [], state.violations
    assert state.leaks() == [], state.leaks()


def sim_artifacts(source: Path, dest: Path, **engine: object) -> Path:
    """A copy of ``source`` artifacts with a simulated engine built from its fp32 ONNX."""
    shutil.copytree(source, dest)
    add_simulated_engine(dest, **engine)
    return dest
