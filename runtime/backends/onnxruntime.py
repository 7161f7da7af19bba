"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers, by availability.

``providers="auto"`` asks for what can really run: ONNX Runtime's ``get_available_providers()``
lists the CUDA and TensorRT providers whenever onnxruntime-gpu is installed, even on a machine
without a GPU, so a GPU provider is requested only when the CUDA driver reports a GPU, and the
TensorRT provider only when the TensorRT libraries are importable too. The providers a session
really got are in ``runner.providers`` (ONNX Runtime falls back quietly when one fails to load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitmsn.core.errors import InputError

from . import device
from .base import RunnerBase, TensorMeta, cast_feed

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def auto_providers(available: Sequence[str]) -> list[str]:
    """The providers worth asking for, best first, on this machine."""
    chosen = []
    if device.has_cuda_gpu():
        if TENSORRT in available and (device.tensorrt_importable("tensorrt") or _ort_trt_libs_present()):
            chosen.append(TENSORRT)
        if CUDA in available:
            chosen.append(CUDA)
    return chosen + [CPU]


def _ort_trt_libs_present() -> bool:
    import ctypes

    for name in ("libnvinfer.so.11", "libnvinfer.so.10"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def tensorrt_provider_options(input_name: str, chw: tuple[int, ...], batch: dict[str, int], cache_dir: Path) -> dict[str, Any]:
    """TensorRT execution provider options: the manifest's batch profile and an engine cache, so
    the provider builds once per machine instead of on every process start."""
    def shape(n: int) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in (n, *chw))

    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True,
            "trt_profile_min_shapes": shape(batch.get("min", 1)), "trt_profile_opt_shapes": shape(batch.get("opt", 8)),
            "trt_profile_max_shapes": shape(batch.get("max", 32))}


class OnnxRuntimeRunner(RunnerBase):
    """One ``onnxruntime.InferenceSession`` (whose ``run`` is thread-safe)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, precision: str = "fp32",
                 providers: str | Sequence[str] = "auto", intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, graph_optimization: str = "all",
                 allow_spinning: bool = True, memory_pattern: bool = False, provider_options: dict[str, dict[str, Any]] | None = None,
                 cpu_arena: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.precision = precision
        self.requested_providers = providers
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        if graph_optimization not in GRAPH_OPTIMIZATION:
            raise InputError(f"graph_optimization {graph_optimization!r}: choose from {', '.join(GRAPH_OPTIMIZATION)}")
        self.graph_optimization = graph_optimization
        self.allow_spinning = allow_spinning
        self.memory_pattern = memory_pattern
        self.cpu_arena = cpu_arena
        self.provider_options = dict(provider_options or {})
        self.providers: list[str] = []
        self._session: Any = None

    def _resolve_providers(self, ort: Any) -> list[str]:
        available = ort.get_available_providers()
        if self.requested_providers == "auto":
            return auto_providers(available)
        wanted = [self.requested_providers] if isinstance(self.requested_providers, str) else list(self.requested_providers)
        resolved = [PROVIDER_ALIASES.get(p.lower(), p) for p in wanted]
        missing = [p for p in resolved if p not in available]
        if missing:
            raise InputError(f"ONNX Runtime provider {missing[0]} is not available here (available: {', '.join(available)}); "
                             "install onnxruntime-gpu for CUDA/TensorRT, or use providers='auto'")
        return resolved

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            from vitmsn.runtime.backends.device import onnxruntime_extra

            raise InputError(f"the onnxruntime backend needs ONNX Runtime ({exc}); "
                             f"pip install 'vitmsn[{onnxruntime_extra()}]'") from exc
        options = ort.SessionOptions()
        levels = dict(zip(GRAPH_OPTIMIZATION, (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                               ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                               ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                               ort.GraphOptimizationLevel.ORT_ENABLE_ALL)))
        options.graph_optimization_level = levels[self.graph_optimization]
        if self.intra_op_threads:
            options.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads:
            options.inter_op_num_threads = int(self.inter_op_threads)
        # ONNX Runtime's memory pattern pre-plans one block per input shape it has seen; off by
        # default: on ViT-S at batch 8 it added ~45 MB of peak memory for no measurable speed-up.
        options.enable_mem_pattern = self.memory_pattern
        # Off for the export's checks: the arena keeps a run's peak allocated after it, so a PyTorch run that follows
        # would hold its own peak on top (ViT-B/4 at batch 8: 5.4 GB kept).
        options.enable_cpu_mem_arena = self.cpu_arena
        if not self.allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = self._resolve_providers(ort)
        with_options = [(p, self.provider_options[p]) if p in self.provider_options else p for p in providers]
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=with_options)
        except Exception as exc:  # ONNX Runtime raises its own exception types (Fail, InvalidGraph, ...)
            raise InputError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc}); "
                             "re-run vitmsn-export") from exc
        self.providers = list(self._session.get_providers())
        self._inputs = {
            i.name: TensorMeta(i.name, np.dtype(_ORT_DTYPES.get(i.type, np.float32)),
                               tuple(d if isinstance(d, int) else str(d) for d in i.shape))
            for i in self._session.get_inputs()
        }
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _deactivate(self) -> None:
        self._session = None  # the session frees its (host or device) memory when released

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = cast_feed(self._inputs, feed)
        outputs = self._session.run(self._output_names, cast)
        return dict(zip(self._output_names, outputs))
