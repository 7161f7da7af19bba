"""The runtime-only install, from a fresh virtual environment: numpy, Pillow and onnxruntime (CPU) from the
package index, the project with --no-deps. The console scripts exist there but click does not: they must print the
one-line install hint; the Python runtime API must predict. About 40 s, most of it pip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]


@pytest.mark.slow
def test_runtime_only_install(demo_artifacts: Path, tmp_path: Path) -> None:
    from PIL import Image

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    py, bin_ = venv / "bin" / "python", venv / "bin"
    deps = _run([str(py), "-m", "pip", "install", "--quiet", "numpy", "pillow", "onnxruntime"])
    assert deps.returncode == 0, deps.stderr
    project = _run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)])
    assert project.returncode == 0, project.stderr
    assert _run([str(py), "-c", "import click"]).returncode != 0  # really without the cli extra

    for script, extra in (("vitmsn", "cli"), ("vitmsn-export", "export")):
        proc = _run([str(bin_ / script), "--help"])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and f"pip install 'vitmsn[{extra}]'" in proc.stderr

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    code = ("import json, sys; from vitmsn.runtime import Predictor\n"
            f"with Predictor.from_artifacts({str(demo_artifacts)!r}, backend='onnxruntime') as p:\n"
            f"    preds = p.predict([{str(image)!r}], top_k=3)\n"
            "print(json.dumps([[label, float(score)] for label, score in preds[0]]))\n"
            "assert not any(m in sys.modules for m in ('torch', 'onnx', 'transformers', 'click'))")
    proc = _run([str(py), "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    preds = json.loads(proc.stdout)
    assert len(preds) == 3 and all(0.0 <= s <= 1.0 for _, s in preds)
