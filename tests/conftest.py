"""Shared, session-scoped fixtures: real checkpoints, real exports, real image files.

Every fixture builds real artifacts once per test session (the export pipeline is the code
under test elsewhere; here it only provides inputs):

* ``demo_artifacts``: ``vitmsn-export --model demo`` (the trained demo checkpoint), FP32.
* ``vits_checkpoint`` / ``vits_artifacts``: a randomly initialised ViT-S-shaped classifier
  (hidden 384, 12 layers, 6 heads, 1000 labels) saved by transformers, and its FP32 export.
* ``heldout_images``: the demo's held-out images as real JPEG/PNG files in class folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELDOUT_PER_CLASS = 25


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("artifacts") / "demo"
    run_export(ExportOptions(model="demo", out=out, engine="skip"))
    return out


@pytest.fixture(scope="session")
def heldout_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.demo import write_dataset

    out = tmp_path_factory.mktemp("heldout")
    write_dataset(out, per_class=HELDOUT_PER_CLASS, split="heldout")
    return out


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import ViTMSNConfig, ViTMSNForImageClassification

    torch.manual_seed(0)
    config = ViTMSNConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          layer_norm_eps=1e-6, num_labels=1000)
    out = tmp_path_factory.mktemp("vits") / "checkpoint"
    ViTMSNForImageClassification(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vits_artifacts(vits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("artifacts") / "vits"
    run_export(ExportOptions(model=str(vits_checkpoint), out=out, engine="skip"))
    return out


# ---- what a test needs: the only reasons a test may skip ------------------------------------------
# A test that needs a CUDA GPU carries ``gpu``; one that needs the full TensorRT runtime libraries
# carries ``tensorrt``. Where that is absent it skips here, with a reason that starts with the marker
# name in brackets; .ci/run fails the run when any skip reason does not (a skip never hides a
# regression, and it is never reported as a pass).
def _tensorrt_runtime_missing() -> str | None:
    import ctypes

    try:
        import tensorrt  # noqa: F401  (the Python package; its libraries load below)
    except Exception as exc:  # ImportError, or OSError from a bindings wheel without its libraries
        return f"the TensorRT Python package does not import ({type(exc).__name__}: {exc})"
    for lib in ("libnvinfer.so.10", "libnvinfer.so.11"):
        try:
            ctypes.CDLL(lib)
            return None
        except OSError:
            continue
    return "the TensorRT runtime libraries (libnvinfer) are not installed"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from vitmsn.runtime.backends.device import has_cuda_gpu

    need_gpu = any(item.get_closest_marker("gpu") for item in items)
    need_trt = any(item.get_closest_marker("tensorrt") for item in items)
    no_gpu = None if not need_gpu or has_cuda_gpu() else "no CUDA GPU on this machine (the CI machines have none)"
    no_trt = _tensorrt_runtime_missing() if need_trt else None
    for item in items:
        # prepended, so these are the reasons pytest reports (a test's own skipif comes after)
        if no_trt and item.get_closest_marker("tensorrt"):
            item.add_marker(pytest.mark.skipif(True, reason=f"[tensorrt] needs the full TensorRT runtime: {no_trt}"), append=False)
        if no_gpu and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skipif(True, reason=f"[gpu] needs a CUDA GPU: {no_gpu}"), append=False)
