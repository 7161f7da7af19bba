"""OpenVINO rows of ``vitmsn bench``: the runtime's :class:`~vitmsn.runtime.openvino_runner.OpenVINORunner`
on the artifacts' graphs, at each inference precision that differs on this CPU.

Rows (``variant`` says the inference precision the compiled model really ran):

* ``fp32``: model.fp32.onnx, f32;
* ``bf16``: model.fp32.onnx, bf16 (where the CPU has AVX512_BF16/AMX; else the row would be fp32's twin);
* ``int8``: model.int8.onnx (the Q/DQ graph), bf16 for what is not INT8 where the CPU has it, and
  f32 for it too, so "the best configuration OpenVINO reaches by itself" is one of the rows.
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
        from vitmsn.runtime.openvino_runner import OpenVINORunner

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


def openvino_backends(manifest: Any, input_name: str, threads: int, wants: Any) -> tuple[list[OpenVINOBackend], str]:
    """The OpenVINO rows for these artifacts on this CPU, or none and the reason."""
    from vitmsn.runtime.cpu import bf16_capable
    from vitmsn.runtime.openvino_runner import openvino_available

    if not openvino_available():
        return [], "OpenVINO is not installed (pip install 'vitmsn[openvino]')"
    rows = []
    fp32 = manifest.verify_file(manifest.precisions["fp32"]["file"], manifest.precisions["fp32"]["sha256"])
    bf16 = bf16_capable()
    if wants("openvino", "fp32"):
        rows.append(OpenVINOBackend(fp32, input_name, precision="fp32", inference_precision="f32", threads=threads))
    if bf16 and wants("openvino", "bf16"):
        rows.append(OpenVINOBackend(fp32, input_name, precision="bf16", inference_precision="bf16", threads=threads))
    if "int8" in manifest.precisions and wants("openvino", "int8"):
        entry = manifest.precisions["int8"]
        path = manifest.verify_file(entry["file"], entry["sha256"])
        for inference in (("bf16", "f32") if bf16 else ("f32",)):
            rows.append(OpenVINOBackend(path, input_name, precision="int8", inference_precision=inference, threads=threads))
    return rows, ""
