"""OpenVINO backend (CPU): the artifacts' FP32 graph and Q/DQ INT8 graphs, with the inference
precision chosen per CPU and recorded.

OpenVINO's CPU plugin runs an FP32 graph in BF16 by default on CPUs with AVX512_BF16 or AMX.
That is a precision change, so it is never left to the default: ``inference_precision`` is set
explicitly from the artifact precision asked for (:func:`inference_precision_for`):

* ``fp32``: f32, always (the exact reference path);
* ``bf16``: bf16 where the CPU has AVX512_BF16 or AMX, else f32 (recorded in ``notes``);
* ``int8``: bf16 for what is not INT8 where the CPU has it, else f32.

What the compiled model really runs is read back from OpenVINO (``runner.inference_precision``),
so reports say what ran, not what was asked for.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any

import numpy as np

from vitmsn.core.errors import InputError

from .cpu import bf16_capable, cpu_flags  # noqa: F401  (re-exported)
from .base import RunnerBase, TensorMeta, cast_feed
from .device import module_available

_OV_PRECISION = {"f32": "f32", "bf16": "bf16"}


def inference_precision_for(precision: str, flags: frozenset[str] | None = None) -> str:
    """OpenVINO's inference precision ("f32" or "bf16") for an artifact precision on this CPU."""
    if precision == "fp32":
        return "f32"
    if precision in ("bf16", "int8"):
        return "bf16" if bf16_capable(flags) else "f32"
    raise InputError(f"precision {precision!r} does not run on OpenVINO here; use fp32, bf16 or int8")


def openvino_available() -> bool:
    return module_available("openvino")


def _precision_name(value: Any) -> str:
    """OpenVINO's element type as "f32"/"bf16" (the property reads back as ``<Type: 'bfloat16'>``)."""
    text = str(getattr(value, "get_type_name", lambda: value)()).lower()
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(text, text)


class OpenVINORunner(RunnerBase):
    """One OpenVINO ``CompiledModel`` on the CPU; each concurrent ``infer`` takes its own infer request
    from a pool (an ``InferRequest`` is not re-entrant; the compiled model is)."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike[str], *, precision: str = "fp32", inference_precision: str = "auto",
                 threads: int | None = None, performance_mode: str = "LATENCY") -> None:
        super().__init__()
        self.path = Path(path)
        self.precision = precision
        if inference_precision == "auto":
            inference_precision = inference_precision_for(precision)
        if inference_precision not in _OV_PRECISION:
            raise InputError(f"inference_precision {inference_precision!r}: choose from auto, f32, bf16")
        self.requested_inference_precision = inference_precision
        self.inference_precision = ""  # what the compiled model runs, read back after activate()
        self.threads = threads
        if performance_mode not in ("LATENCY", "THROUGHPUT"):
            raise InputError(f"performance_mode {performance_mode!r}: choose from LATENCY, THROUGHPUT")
        self.performance_mode = performance_mode
        self.version = ""
        self._compiled: Any = None
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def _activate(self) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise InputError(f"the openvino backend needs OpenVINO ({exc}); pip install 'vitmsn[openvino]'") from exc
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            self._compiled = core.compile_model(model, "CPU", self.config())
        except Exception as exc:  # OpenVINO raises RuntimeError/its own types for unreadable graphs
            raise InputError(f"{self.path}: OpenVINO cannot load it ({type(exc).__name__}: {exc}); "
                             "re-run vitmsn-export") from exc
        self.version = str(ov.get_version())
        self.inference_precision = _precision_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._inputs = {}
        for port in self._compiled.inputs:
            dims = tuple(int(d.get_length()) if d.is_static else ("batch" if i == 0 else f"dim{i}")
                         for i, d in enumerate(port.get_partial_shape()))
            self._inputs[port.get_any_name()] = TensorMeta(port.get_any_name(),
                                                           np.dtype(port.get_element_type().to_dtype()), dims)
        self._output_names = [port.get_any_name() for port in self._compiled.outputs]

    def config(self) -> dict[str, Any]:
        """The properties the model is compiled with."""
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[self.requested_inference_precision],
                                  "PERFORMANCE_HINT": self.performance_mode}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def _deactivate(self) -> None:
        self._requests = queue.SimpleQueue()
        self._compiled = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = cast_feed(self._inputs, feed)
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            result = request.infer(cast, share_inputs=True, share_outputs=False)
            return {name: np.asarray(result[port]) for name, port in zip(self._output_names, self._compiled.outputs)}
        finally:
            self._requests.put(request)
