"""benchmarks/gpu_check.py, the ready GPU check, runs cleanly where there is no GPU: every stage
says "not run" with the reason, exit 0, one Markdown table. (On a GPU machine it is the check itself.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vitmsn.runtime.backends.device import has_cuda_gpu

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_without_a_gpu_reports_every_stage_as_not_run(tmp_path: Path) -> None:
    if has_cuda_gpu():
        pytest.skip("[gpu] this machine has a GPU: run benchmarks/gpu_check.py itself")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert len(rows) == 6 and all("| not run | no GPU" in row for row in rows), rows
    assert (tmp_path / "gpu-check-no-gpu.md").read_text() == r.stdout.rstrip("\n") + "\n"
