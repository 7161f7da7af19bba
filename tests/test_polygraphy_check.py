"""Polygraphy as the independent cross-check (export/validation/polygraphy_check.py).

Polygraphy's comparator is exercised for real here on two ONNX Runtime runners (Polygraphy's own
OnnxrtRunner): it passes identical graphs and fails a graph with planted damage. The engine-vs-ONNX
Runtime comparison itself needs a GPU with the real TensorRT libraries (Polygraphy drives CUDA
through libcudart, which the test simulation does not provide): marked ``gpu``/``tensorrt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import Exported, rt_cls, rt_engine  # noqa: F401
from vitmsn.export.validation.polygraphy_check import compare_runners, engine_vs_onnxruntime, why_not_runnable

X = [{"pixel_values": np.random.default_rng(s).standard_normal((2, 3, 48, 48)).astype(np.float32)} for s in range(2)]


def _runners(*paths: Path):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return lambda: [OnnxrtRunner(SessionFromOnnx(str(p), providers=["CPUExecutionProvider"]), name=f"ort-{i}")
                    for i, p in enumerate(paths)]


def test_polygraphy_comparator_passes_the_same_graph_and_fails_planted_damage(rt_cls: Exported, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    good = rt_cls.artifacts / "model.fp32.onnx"
    passed, detail = compare_runners(_runners(good, good), X, 1e-3, 1e-3)
    assert passed and "match" in detail
    model = onnx.load(str(good))
    bias = next(i for i in model.graph.initializer if i.name == "classifier.bias")
    damaged = numpy_helper.to_array(bias).copy()
    damaged[0] += 1.0  # planted damage: one logit off by 1.0
    bias.CopyFrom(numpy_helper.from_array(damaged.astype(np.float32), bias.name))
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    passed, detail = compare_runners(_runners(good, tmp_path / "damaged.onnx"), X, 1e-3, 1e-3)
    assert not passed and "MISMATCH" in detail


def test_without_a_gpu_the_cross_check_says_why_it_did_not_run(rt_engine: Path) -> None:
    from vitmsn.runtime.backends.device import has_cuda_gpu

    if has_cuda_gpu():
        pytest.skip("[gpu] this machine has a GPU: the no-GPU report is for machines without one")
    c = engine_vs_onnxruntime(rt_engine / "engine.fp32.tensorrt-rtx.plan", rt_engine / "model.fp32.onnx", "tensorrt-rtx",
                              "fp32", X)
    assert not c.ran and c.detail == "not run: no CUDA GPU"


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_matches_onnxruntime_through_polygraphy(rt_engine: Path) -> None:
    reason = why_not_runnable("tensorrt-rtx")
    if reason is not None:
        pytest.skip(f"[tensorrt] Polygraphy cannot run the TensorRT-RTX engine here: {reason}")
    c = engine_vs_onnxruntime(rt_engine / "engine.fp32.tensorrt-rtx.plan", rt_engine / "model.fp32.onnx", "tensorrt-rtx",
                              "fp32", X)
    assert c.ran and c.passed, c.detail
