"""The vitmsn commands as users meet them: install hints instead of tracebacks, --version, the config file from a
sub-directory, predict on a directory, inspect's CPU flavours, multipart uploads, readable chart titles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vitmsn
from vitmsn.cli import group

from serving_fixtures import ServerProcess, jpeg_bytes, serve_process  # noqa: F401  (fixture)


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


# A package set to None in sys.modules makes its import fail exactly as when it is not installed.
WITHOUT = "import sys; sys.modules[{name!r}] = None; sys.argv[0] = 'x'; from vitmsn.cli import {entry}; {entry}()"


@pytest.mark.parametrize("entry, args, missing, extra", [
    ("main", ["--help"], "click", "cli"),
    ("export_main", ["--help"], "click", "export"),
    ("main", ["serve", "ARTIFACTS"], "prometheus_client", "serve"),
    ("main", ["serve", "ARTIFACTS"], "starlette", "serve"),
    ("export_main", ["--model", "demo"], "torch", "export"),
])
def test_missing_extra_is_one_line_not_a_traceback(entry: str, args: list[str], missing: str, extra: str,
                                                   demo_artifacts: Path) -> None:
    args = [str(demo_artifacts) if a == "ARTIFACTS" else a for a in args]
    proc = _python(WITHOUT.format(name=missing, entry=entry), *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"pip install 'vitmsn[{extra}]'" in lines[0] and repr(missing) in lines[0], proc.stderr


@pytest.mark.parametrize("entry", ["main", "export_main"])
def test_version_on_both_commands(entry: str) -> None:
    proc = _python(f"from vitmsn.cli import {entry}; {entry}()", "--version")
    assert proc.returncode == 0 and vitmsn.__version__ in proc.stdout, proc.stderr


def _images(d: Path, names: list[str]) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for name in names:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_every_command_takes_artifacts_from_the_config_found_above(demo_artifacts: Path, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[tool.vitmsn]\nmodel = "demo"\nout = "{demo_artifacts}"\n')
    sub = tmp_path / "src" / "deep"
    _images(sub / "imgs", ["b/2.png", "a/1.png", "c.jpg"])
    proc = _python("from vitmsn.cli import main; main()", "predict", "imgs", "--json", "--top-k", "1", cwd=sub)
    assert proc.returncode == 0, proc.stderr
    assert f"config: {tmp_path / 'pyproject.toml'}" in proc.stderr  # the file used is named
    inputs = [e["input"] for e in json.loads(proc.stdout)]
    assert inputs == ["imgs/a/1.png", "imgs/b/2.png", "imgs/c.jpg"]  # a directory: recursive, sorted
    inspected = _python("from vitmsn.cli import main; main()", "inspect", cwd=sub)
    assert inspected.returncode == 0 and f"artifacts  {demo_artifacts}" in inspected.stdout, inspected.stderr


def test_without_artifacts_or_config_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in (["inspect"], ["bench"], ["triton", "--repo", "r"], ["validate", "--images", "x"]):
        result = CliRunner().invoke(group, command)
        assert result.exit_code == 2 and "ARTIFACTS is required" in result.output and "out =" in result.output, command


def test_inspect_lists_and_verifies_the_cpu_flavours(demo_artifacts: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(group, ["inspect", str(demo_artifacts), "--verify"])
    assert result.exit_code == 0, result.output
    assert "model.fp32.ort.onnx (onnxruntime_optimized" in result.output
    import shutil

    copy = tmp_path / "a"
    shutil.copytree(demo_artifacts, copy)
    with open(copy / "model.fp32.ort.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(group, ["inspect", str(copy), "--verify"])
    assert result.exit_code == 2 and "model.fp32.ort.onnx" in result.output


def test_multipart_upload_is_told_to_send_raw_bytes(demo_artifacts: Path, serve_process: type[ServerProcess]) -> None:
    import httpx

    server = serve_process([str(demo_artifacts), "--backend", "onnxruntime"])
    image = jpeg_bytes(0)
    with httpx.Client(timeout=30) as client:
        r = client.post(server.url + "/predict", files={"file": ("a.jpg", image, "image/jpeg")})
        assert r.status_code == 400
        assert r.json()["error"].startswith("send the raw image bytes (Content-Type: image/*), not multipart/form-data")
        ok = client.post(server.url + "/predict", content=image, headers={"Content-Type": "image/jpeg"})
        assert ok.status_code == 200, ok.text


def test_chart_titles_do_not_overlap_for_long_backend_names() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vitmsn.export.validation.plots import histogram_figure

    rng = np.random.default_rng(0)
    result = SimpleNamespace(name="onnxruntime int8 (model.int8.cpu.onnx, CPUExecutionProvider, 2 threads)",
                             per_output={"logits": {"cosine": 1 - rng.uniform(1e-7, 1e-4, 50),
                                                    "max_abs": rng.uniform(1e-4, 1e-2, 50)}})
    fig = histogram_figure(result, "logits")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    left, right = (ax.title.get_window_extent(renderer) for ax in fig.axes[:2])
    assert left.x1 < right.x0, (left, right)
