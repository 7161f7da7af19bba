"""What the commands print where: results (tables, JSON, per-file verify lines, the repository written) on stdout,
progress, notes and warnings on stderr; the runtime's choice said once, its notes only when they are news; a
forgotten ARTIFACTS said as such."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from runtime_fixtures import Exported, rt_cls  # noqa: F401  (fixture)
from sim_fixtures import sim_artifacts

VITMSN = str(Path(sys.executable).parent / "vitmsn")


def _vitmsn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")  # a machine without an NVIDIA GPU
    return subprocess.run([VITMSN, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def test_inspect_verify_lines_go_to_stdout(demo_artifacts: Path, tmp_path: Path) -> None:
    proc = _vitmsn("inspect", str(demo_artifacts), "--verify", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok        model.fp32.onnx" in proc.stdout and "files match their SHA-256" in proc.stdout
    assert proc.stderr == ""


def test_triton_repository_written_goes_to_stdout(demo_artifacts: Path, tmp_path: Path) -> None:
    proc = _vitmsn("triton", str(demo_artifacts), "--repo", str(tmp_path / "repo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'repo'}" in proc.stdout and "[ok]" in proc.stdout
    start = [line for line in proc.stdout.splitlines() if line.startswith("start Triton with:")]
    assert len(start) == 1 and "needs vitmsn's runtime and Pillow" in start[0]  # the ensemble's Python models
    assert "wrote" not in proc.stderr and "[ok]" not in proc.stderr


def test_predict_without_artifacts_names_the_image_as_not_artifacts(image: Path, tmp_path: Path) -> None:
    proc = _vitmsn("predict", str(image), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {image}: not an artifacts directory"), proc.stderr


def test_engine_not_used_on_a_cpu_machine_is_no_note_unless_asked(rt_cls: Exported, image: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "art")  # the manifest names a TensorRT engine
    quiet = _vitmsn("predict", str(art), str(image), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines() == [line for line in quiet.stderr.splitlines() if line.startswith("running: ")]
    assert len(quiet.stderr.splitlines()) == 1, quiet.stderr
    verbose = _vitmsn("predict", str(art), str(image), "-v", cwd=tmp_path)
    assert verbose.returncode == 0 and any(line.startswith("note:") and "engine" in line
                                           for line in verbose.stderr.splitlines()), verbose.stderr
