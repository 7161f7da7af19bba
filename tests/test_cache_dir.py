"""One cache directory for calibration tensors and TensorRT runtime caches: VITMSN_CACHE, XDG_CACHE_HOME, the
deprecated VITMSN_CACHE_DIR; `vitmsn cache` shows and clears it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitmsn.core import cache_dir
from vitmsn.calibration.dataset import default_cache_dir


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("VITMSN_CACHE", "VITMSN_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cache_dir, "_noted", False)
    return monkeypatch


def test_home_then_xdg_then_the_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vitmsn" / "calibration"
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vitmsn" / "calibration"
    env.setenv("VITMSN_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "calibration"


def test_runtime_and_calibration_share_the_directory(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vitmsn.runtime.backends.tensorrt import runtime_cache_path

    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    entry = type("Entry", (), {"sha256": "ab" * 32})()
    assert runtime_cache_path(entry, None).parent.parent == default_cache_dir().parent == tmp_path / "xdg" / "vitmsn"


def test_old_variable_still_works_with_a_deprecation_note(env: pytest.MonkeyPatch, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    env.setenv("VITMSN_CACHE_DIR", str(tmp_path / "old"))
    with caplog.at_level(logging.WARNING, logger="vitmsn.core.cache_dir"):
        assert default_cache_dir() == tmp_path / "old" / "calibration"
        default_cache_dir()
    assert [r.getMessage() for r in caplog.records] == ["VITMSN_CACHE_DIR is deprecated: set VITMSN_CACHE instead "
                                                        "(same directory)"]
    env.setenv("VITMSN_CACHE", str(tmp_path / "new"))  # the new one wins
    assert default_cache_dir() == tmp_path / "new" / "calibration"


def test_cache_command_shows_and_clears(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "calibration").mkdir(parents=True)
    (root / "calibration" / "calib-x.npz").write_bytes(b"\0" * 3_000_000)
    (root / "tensorrt-rtx").mkdir()
    (root / "tensorrt-rtx" / "e.cache").write_bytes(b"\0" * 1_000_000)
    exe = str(Path(sys.executable).parent / "vitmsn")
    env = dict(os.environ, VITMSN_CACHE=str(root))
    shown = subprocess.run([exe, "cache"], capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"{root}  4.0 MB" and lines[1].split() == ["calibration/", "3.0", "MB"]
    cleared = subprocess.run([exe, "cache", "--clear"], capture_output=True, text=True, timeout=60, env=env)
    assert cleared.returncode == 0 and cleared.stdout == f"cleared {root}\n", cleared.stderr
    assert list(root.iterdir()) == []
