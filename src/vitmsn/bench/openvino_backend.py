"""OpenVINO rows of ``vitmsn bench``: the runtime's :class:`~vitmsn.runtime.backends.openvino.OpenVINORunner`
on the artifacts' graphs, at each inference precision that differs on this CPU.

Rows (``variant`` says the inference precision the compiled model really ran):

* ``fp32``: model.fp32.onnx, f32;
* ``bf16``: model.fp32.onnx, bf16 (where the CPU has AVX512_BF16/AMX; else the row would be fp32's twin);
* ``int8``: model.int8.onnx (the Q/DQ graph), bf16 for what is not INT8 where the CPU has it, and
  f32 for it too;
* ``openvino`` rows with variant ``OpenVINO defaults``: the same files compiled by OpenVINO alone
  (``core.compile_model(path, "CPU")``, no property set), what a user gets by loading our artifacts
  into OpenVINO directly: the bar "the best configuration OpenVINO reaches by itself". On a BF16
  CPU its default inference precision is bf16, so the FP32 graph's default row is labelled bf16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backends import BenchBackend, Call


class OpenVINOBackend(BenchBackend):
    backend = "openvino"

    def __init__(self, path: Path, input_name: str, *, precision: str, inference_precision: str,
                 threads: int | None = None) -> None:
        self.path, self.input_name, self.precision = Path(path), input_name, precision
        self.requested, self.threads = inference_precision, threads
        self.variant = f"inference {inference_precision}"
        self.runner: Any = None

    def open(self) -> None:
        from vitmsn.runtime.backends.openvino import OpenVINORunner

        self.runner = OpenVINORunner(self.path, precision=self.precision, inference_precision=self.requested,
                                     threads=self.threads)
        self.runner.activate()
        self.variant = f"inference {self.runner.inference_precision}"

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.infer({self.input_name: x})

    def call_for(self, x: np.ndarray) -> Call:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: self.runner.infer(feed)

    def info(self) -> dict[str, Any]:
        return {"file": self.path.name, "inference_precision": getattr(self.runner, "inference_precision", None),
                "openvino_version": getattr(self.runner, "version", None), "threads": self.threads}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None


class OpenVINODefaultBackend(BenchBackend):
    """The artifact compiled by OpenVINO with its own defaults (not through vitmsn's runner)."""

    backend = "openvino"

    def __init__(self, path: Path, input_name: str, *, precision: str, hint: str | None = None) -> None:
        self.path, self.input_name, self.precision, self.hint = Path(path), input_name, precision, hint
        self.variant = "OpenVINO defaults" + (f", {hint}" if hint else "")
        self.compiled: Any = None
        self.request: Any = None

    def open(self) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": self.hint} if self.hint else {}
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return {port.get_any_name(): np.array(result[port]) for port in self.compiled.outputs}

    def call_for(self, x: np.ndarray) -> Call:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: self.request.infer(feed)

    def info(self) -> dict[str, Any]:
        return {"file": self.path.name, "inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                "via_vitmsn": False}

    def close(self) -> None:
        self.request = self.compiled = None


def openvino_backends(manifest: Any, input_name: str, threads: int, wants: Any,
                      defaults: bool = True) -> tuple[list[BenchBackend], str]:
    """The OpenVINO rows for these artifacts on this CPU, or none and the reason."""
    from vitmsn.runtime.backends.cpu import bf16_capable
    from vitmsn.runtime.backends.openvino import openvino_available

    if not openvino_available():
        return [], "OpenVINO is not installed (pip install 'vitmsn[openvino]')"
    rows: list[BenchBackend] = []
    fp32 = manifest.verify(manifest.precisions["fp32"])
    bf16 = bf16_capable()
    if wants("openvino", "fp32"):
        rows.append(OpenVINOBackend(fp32, input_name, precision="fp32", inference_precision="f32", threads=threads))
    if bf16 and wants("openvino", "bf16"):
        rows.append(OpenVINOBackend(fp32, input_name, precision="bf16", inference_precision="bf16", threads=threads))
    if "int8" in manifest.precisions and wants("openvino", "int8"):
        entry = manifest.precisions["int8"]
        path = manifest.verify(entry)
        for inference in (("bf16", "f32") if bf16 else ("f32",)):
            rows.append(OpenVINOBackend(path, input_name, precision="int8", inference_precision=inference, threads=threads))
    if defaults:
        default_fp32 = "bf16" if bf16 else "fp32"
        if wants("openvino", default_fp32):
            rows.append(OpenVINODefaultBackend(fp32, input_name, precision=default_fp32))
        if "int8" in manifest.precisions and wants("openvino", "int8"):
            rows.append(OpenVINODefaultBackend(path, input_name, precision="int8"))
    return rows, ""
