"""Polygraphy as the independent cross-check of vitmsn's TensorRT runner (issue 15).

``vitmsn validate`` measures every engine through :class:`~vitmsn.runtime.backends.tensorrt.TensorRTRunner`,
code we wrote. Where TensorRT really runs (a GPU, the real ``tensorrt``/``tensorrt_rtx`` libraries),
it also compares the engine with ONNX Runtime through Polygraphy's own runners (``TrtRunner``,
``OnnxrtRunner``) and comparator (``Comparator.compare_accuracy`` with ``CompareFunc.simple``), on
the same preprocessed images, so a bug in our buffers, streams or shapes cannot hide behind our own
comparison. A disagreement fails validation (the ``polygraphy_cross_check`` check).

Polygraphy drives CUDA through its own ctypes binding of ``libcudart``, so it cannot run against the
test simulation of TensorRT (tests/trt_simulation): there, and on machines without TensorRT, the
check records why it did not run. Tolerances: FP32 1e-3, FP16 and INT8 engines are compared with
the looser bounds their precision allows (absolute, on logits/embeddings).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (5e-2, 5e-2), "int8": (0.5, 0.1)}  # (atol, rtol)


@dataclass(frozen=True)
class CrossCheck:
    file: str
    ran: bool
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "ran": self.ran, "passed": self.passed, "detail": self.detail}


def why_not_runnable(target: str) -> str | None:
    """Why Polygraphy cannot run an engine of ``target`` here (None: it can)."""
    from vitmsn.runtime.backends import device

    if importlib.util.find_spec("polygraphy") is None:
        return "polygraphy is not installed (pip install 'vitmsn[export]')"
    if not device.has_cuda_gpu():
        return "no CUDA GPU"
    module = sys.modules.get(device.TENSORRT_MODULES.get(target, "tensorrt"))
    if module is not None and getattr(module, "SIMULATION", False):
        return "TensorRT is the test simulation; Polygraphy drives CUDA through libcudart, which is not simulated"
    if not device.tensorrt_importable(target):
        return f"the {target} runtime libraries are not importable"
    return None


def compare_runners(make_runners: Callable[[], Sequence[Any]], feeds: Sequence[dict[str, np.ndarray]],
                    atol: float, rtol: float) -> tuple[bool, str]:
    """Run Polygraphy runners on ``feeds`` and compare them with Polygraphy's comparator."""
    from polygraphy.comparator import Comparator, CompareFunc

    runners = list(make_runners())
    results = Comparator.run(runners, data_loader=list(feeds))
    accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
    passed = bool(accuracy)
    names = " vs ".join(r.name for r in runners)
    return passed, f"{names}: {'match' if passed else 'MISMATCH'} within atol {atol}, rtol {rtol} on {len(feeds)} batch(es)"


def engine_vs_onnxruntime(engine: Path, onnx: Path, target: str, precision: str,
                          feeds: Sequence[dict[str, np.ndarray]]) -> CrossCheck:
    reason = why_not_runnable(target)
    if reason is not None:
        return CrossCheck(engine.name, False, True, f"not run: {reason}")
    import polygraphy.config

    polygraphy.config.USE_TENSORRT_RTX = target == "tensorrt-rtx"  # read when polygraphy.backend.trt is imported
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    atol, rtol = TOLERANCES.get(precision, TOLERANCES["fp32"])

    def runners() -> list[Any]:
        # EngineFromBytes allows engine host code itself (version-compatible engines)
        return [TrtRunner(EngineFromBytes(BytesFromPath(str(engine))), name=f"polygraphy-trt {engine.name}"),
                OnnxrtRunner(SessionFromOnnx(str(onnx), providers=["CPUExecutionProvider"]), name=f"onnxruntime {onnx.name}")]

    passed, detail = compare_runners(runners, feeds, atol, rtol)
    return CrossCheck(engine.name, True, passed, detail)


def cross_check_engines(manifest: Any, targets: Sequence[Any], x: np.ndarray | None) -> tuple[list[CrossCheck], list[dict[str, Any]]]:
    """For every engine ``vitmsn validate`` ran: the Polygraphy comparison and the check it adds."""
    crosses: list[CrossCheck] = []
    if x is None:
        return crosses, []
    engines = {e.file: e for e in manifest.engines}
    for t in targets:
        entry = engines.get(t.file)
        if entry is None:
            continue
        onnx = manifest.path_of(entry.onnx or manifest.precision(entry.precision).file)
        crosses.append(engine_vs_onnxruntime(manifest.path_of(t.file), onnx, entry.target,
                                             entry.precision, [{manifest.input_name: x}]))
    checks = [{"check": "polygraphy_cross_check", "passed": c.passed, "detail": f"{c.file}: {c.detail}"}
              for c in crosses if c.ran]
    return crosses, checks
