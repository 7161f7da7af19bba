"""The benchmarked backends, each behind the same small surface.

* PyTorch (our ``ViTMSNClassifier``/``ViTMSNBackbone`` with the artifacts' checkpoint):
  ``pytorch-eager`` (explicit "math" attention, the exported graph's twin), ``pytorch-sdpa``
  (``scaled_dot_product_attention``), ``pytorch-compile`` (``torch.compile`` of the SDPA model);
  on CPU in FP32, on a CUDA GPU also in FP16.
* ONNX Runtime: the runtime's :class:`~vitmsn.runtime.backends.onnxruntime.OnnxRuntimeRunner`, the
  code users deploy, on every ONNX graph the manifest names (plus the ONNX Runtime-fused FP32
  graph), on the CPU provider and, where a GPU and onnxruntime-gpu are present, the CUDA one.
* TensorRT: the runtime's :class:`~vitmsn.runtime.backends.tensorrt.TensorRTRunner` for the
  correctness check; timing by :mod:`vitmsn.bench.tensorrt_timing` (CUDA events and graphs).

``call_for(x)`` returns the zero-argument call that is timed: one batch, start to finish
(ONNX Runtime: numpy in, numpy out; PyTorch CPU: tensor in, tensor out; PyTorch CUDA: input
already on the device, the call ends with ``torch.cuda.synchronize()``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitmsn.runtime.manifest.entries import EngineEntry

Call = Callable[[], object]


class BenchBackend:
    backend = "base"
    precision = "fp32"
    device = "cpu"
    variant = ""

    def open(self) -> None:
        """Load the model/session. Raise anything; the suite reports the row as skipped with the message."""

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def call_for(self, x: np.ndarray) -> Call:
        return lambda: self.infer(x)

    def info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass

    @property
    def label(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.backend} {self.precision} {self.device}{variant}"


class PyTorchBackend(BenchBackend):
    def __init__(self, backend: str, build: Callable[[str], Any], output_names: list[str], *,
                 precision: str = "fp32", device: str = "cpu", compile_mode: str | None = None) -> None:
        if backend not in ("pytorch-eager", "pytorch-sdpa", "pytorch-compile"):
            raise ValueError(f"unknown PyTorch backend {backend!r}")
        self.backend, self.precision, self.device = backend, precision, device
        self.attention = "math" if backend == "pytorch-eager" else "sdpa"
        self.build, self.output_names, self.compile_mode = build, output_names, compile_mode
        self.variant = f"mode={compile_mode}" if backend == "pytorch-compile" and compile_mode else ""
        self.model: Any = None

    def open(self) -> None:
        import torch

        model = self.build(self.attention).to(self.device)
        if self.precision == "fp16":
            model = model.half()
        if self.backend == "pytorch-compile":
            model = torch.compile(model, mode=self.compile_mode, dynamic=False)
        self.model = model

    def _tensor(self, x: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.half() if self.precision == "fp16" else t

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            outs = self.model(self._tensor(x))
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}

    def call_for(self, x: np.ndarray) -> Call:
        import torch

        t = self._tensor(x)

        def call() -> object:
            with torch.inference_mode():
                out = self.model(t)
            self._sync()
            return out

        return call

    def info(self) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"attention": self.attention}
        if self.device.startswith("cuda"):
            out["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
            out["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
            out["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        else:
            out["torch_threads"] = torch.get_num_threads()
        return out

    def close(self) -> None:
        self.model = None


class OnnxRuntimeBackend(BenchBackend):
    """One runner with ``threads`` intra-op threads; or, with ``sessions`` > 1, that many runners
    with ``threads // sessions`` threads each, the batch split between them and run side by side
    (data parallelism instead of operator parallelism; ONNX Runtime releases the GIL in ``run``)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, input_name: str, *, precision: str = "fp32", device: str = "cpu",
                 variant: str = "", threads: int | None = None, graph_optimization: str = "all",
                 allow_spinning: bool = True, sessions: int = 1) -> None:
        self.path, self.input_name, self.precision, self.device = Path(path), input_name, precision, device
        self.variant, self.threads, self.graph_optimization = variant, threads, graph_optimization
        self.allow_spinning, self.sessions = allow_spinning, max(1, sessions)
        # intra-op threads per session: the thread budget shared out when the batch is split
        self.session_threads = max(1, (threads or 1) // self.sessions) if self.sessions > 1 else threads
        self.runners: list[Any] = []
        self._pool: Any = None

    @property
    def runner(self) -> Any:
        return self.runners[0] if self.runners else None

    @property
    def label(self) -> str:
        split = f" x{self.sessions} sessions" if self.sessions > 1 else ""
        return super().label + split

    def open(self) -> None:
        from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

        providers = ["cuda", "cpu"] if self.device.startswith("cuda") else ["cpu"]
        for _ in range(self.sessions):
            runner = OnnxRuntimeRunner(self.path, precision=self.precision, providers=providers,
                                       intra_op_threads=self.session_threads, inter_op_threads=1,
                                       graph_optimization=self.graph_optimization, allow_spinning=self.allow_spinning)
            runner.activate()
            self.runners.append(runner)
        if self.device.startswith("cuda") and "CUDAExecutionProvider" not in self.runner.providers:
            raise RuntimeError(f"the CUDA provider did not load (session got {self.runner.providers})")
        if self.sessions > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.sessions, thread_name_prefix="bench-ort")

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.sessions == 1:
            return self.runner.infer({self.input_name: x})
        parts = [p for p in np.array_split(np.asarray(x), self.sessions) if len(p)]
        outs = list(self._pool.map(lambda rp: rp[0].infer({self.input_name: rp[1]}), zip(self.runners, parts)))
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def call_for(self, x: np.ndarray) -> Call:
        feed = np.ascontiguousarray(x, dtype=np.float32)
        if self.sessions == 1:
            return lambda: self.runner.infer({self.input_name: feed})
        return lambda: self.infer(feed)

    def info(self) -> dict[str, Any]:
        return {"file": self.path.name, "providers": list(getattr(self.runner, "providers", [])),
                "session": {"intra_op_threads": self.session_threads, "inter_op_threads": 1, "sessions": self.sessions,
                            "graph_optimization": self.graph_optimization, "allow_spinning": self.allow_spinning}}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for runner in self.runners:
            runner.deactivate()
        self.runners = []


class TensorRTBackend(BenchBackend):
    """An engine from the manifest. Correctness through the runtime's runner; timing through
    :func:`vitmsn.bench.tensorrt_timing.time_engine` (see :meth:`measure`)."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path, entry: EngineEntry, input_name: str, *, streams: int = 2,
                 cuda_graphs: bool = True) -> None:
        self.path, self.entry, self.input_name = Path(path), entry, input_name
        self.precision = entry.precision
        self.variant = entry.target
        self.streams, self.cuda_graphs = streams, cuda_graphs
        self.runner: Any = None

    def open(self) -> None:
        from vitmsn.runtime.backends.tensorrt import TensorRTRunner

        self.runner = TensorRTRunner(self.path, self.entry)
        self.runner.activate()

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.infer({self.input_name: x})

    def supports_batch(self, batch: int) -> bool:
        lo = getattr(self.runner, "min_batch", 1) or 1
        hi = getattr(self.runner, "max_batch", None)
        return batch >= lo and (hi is None or batch <= hi)

    def measure(self, batch: int, plan: Any) -> Any:
        from .tensorrt_timing import time_engine

        return time_engine(self.runner, self.input_name, batch, plan, streams=self.streams,
                           cuda_graphs=self.cuda_graphs)  # the runner opened above: one deserialization

    def info(self) -> dict[str, Any]:
        return {"file": self.path.name, "target": self.variant, "tensorrt_version": self.entry.tensorrt_version,
                "verified": False}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None
