"""Fixtures for the benchmark tests (``from bench_fixtures import bench_tiny_artifacts``).

``conftest.py`` stays the lead's; the ViT-S and demo exports live there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import TINY_CONFIG, save_transformers


@pytest.fixture(scope="session")
def bench_tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FP32 export of a tiny random classifier (2 layers, 4 heads, hidden 32, 32x32 input)."""
    from vitmsn.export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp("bench-tiny")
    save_transformers(root / "checkpoint", **TINY_CONFIG)
    out = root / "artifacts"
    run_export(ExportOptions(model=str(root / "checkpoint"), out=out, engine="skip"))
    return out
