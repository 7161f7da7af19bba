"""The bench times :class:`~vitmsn.runtime.backends.base.Runner`\\ s: one :class:`BenchRow` each, a runner
and the labels its report rows carry.

* ONNX Runtime, OpenVINO, TensorRT: the runtime's own runners (the code users deploy), on the graphs
  the registry names and every other graph the manifest holds; for TensorRT the timing itself is
  :mod:`vitmsn.bench.tensorrt_timing` (CUDA events and graphs) on the runner's engine.
* :class:`TorchRunner`: our ``ViTMSNClassifier``/``ViTMSNBackbone`` with the artifacts' checkpoint,
  ``pytorch-eager`` (explicit "math" attention, the exported graph's twin), ``pytorch-sdpa``,
  ``pytorch-compile`` (``torch.compile`` of the SDPA model); FP32 on CPU, also FP16 on a CUDA GPU.
* :class:`SplitRunner`: a batch split over single-thread sessions run side by side.
* :class:`OpenVINODefaults`: the artifact compiled by OpenVINO with no property set, what a user gets
  by loading our artifacts into OpenVINO directly.

``call_for(x)`` returns the zero-argument call that is timed: one batch, start to finish, input
prepared beforehand (PyTorch CUDA: already on the device, the call ends with ``torch.cuda.synchronize()``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitmsn.runtime.backends.base import Runner, RunnerBase, TensorMeta
from vitmsn.runtime.backends.openvino import OpenVINORunner

Call = Callable[[], object]


@dataclass(eq=False)
class BenchRow:
    """One timed configuration: a runner (inactive until :meth:`open`) and what the report says about it."""

    runner: Runner
    backend: str
    precision: str
    input_name: str
    device: str = "cpu"
    variant: str = ""
    describe: Callable[[Any], dict[str, Any]] = field(default=lambda runner: {})  # the row's extra fields, once open
    relabel: Callable[[Any], str] | None = None  # the variant from the open runner (OpenVINO: what it ran); may raise

    def open(self) -> None:
        """Activate the runner; raise anything: the suite reports the row as skipped with the message."""
        self.runner.activate()
        if self.relabel is not None:
            self.variant = self.relabel(self.runner)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.infer({self.input_name: x})

    def call_for(self, x: np.ndarray) -> Call:
        if isinstance(self.runner, TorchRunner):
            return self.runner.timed_call(x)
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: self.runner.infer(feed)

    def supports_batch(self, batch: int) -> bool:
        lo, hi = getattr(self.runner, "min_batch", 1) or 1, self.runner.max_batch
        return batch >= lo and (hi is None or batch <= hi)

    @property
    def sessions(self) -> int:
        return len(self.runner.runners) if isinstance(self.runner, SplitRunner) else 1

    def info(self) -> dict[str, Any]:
        return self.describe(self.runner)

    def close(self) -> None:
        self.runner.deactivate()

    @property
    def label(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        split = f" x{self.sessions} sessions" if self.sessions > 1 else ""
        return f"{self.backend} {self.precision} {self.device}{variant}{split}"


class TorchRunner(RunnerBase):
    """The PyTorch model as a runner: ``attention`` "math" (``pytorch-eager``) or "sdpa"."""

    def __init__(self, backend: str, build: Callable[[str], Any], output_names: list[str], input_name: str, *,
                 precision: str = "fp32", device: str = "cpu", compile_mode: str | None = None) -> None:
        if backend not in ("pytorch-eager", "pytorch-sdpa", "pytorch-compile"):
            raise ValueError(f"unknown PyTorch backend {backend!r}")
        super().__init__()
        self.name, self.precision, self.device, self.compile_mode = backend, precision, device, compile_mode
        self.attention = "math" if backend == "pytorch-eager" else "sdpa"
        self.build, self._output_names, self.input_name = build, list(output_names), input_name
        self.model: Any = None

    def _activate(self) -> None:
        import torch

        model = self.build(self.attention).to(self.device)
        if self.precision == "fp16":
            model = model.half()
        if self.name == "pytorch-compile":
            model = torch.compile(model, mode=self.compile_mode, dynamic=False)
        self.model = model
        self._inputs = {self.input_name: TensorMeta(self.input_name, np.dtype(np.float32), ("batch", 3, "height", "width"))}

    def _deactivate(self) -> None:
        self.model = None

    def _tensor(self, x: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.half() if self.precision == "fp16" else t

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            outs = self.model(self._tensor(feed[self.input_name]))
        return {n: o.float().cpu().numpy() for n, o in zip(self._output_names, outs)}

    def timed_call(self, x: np.ndarray) -> Call:
        """Tensor in (already on the device), tensor out; CUDA calls end synchronised."""
        import torch

        t = self._tensor(x)

        def call() -> object:
            with torch.inference_mode():
                out = self.model(t)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
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


class SplitRunner(RunnerBase):
    """Several runners side by side, each batch split between them (data parallelism instead of operator
    parallelism; ONNX Runtime releases the GIL in ``run``)."""

    def __init__(self, runners: list[Any]) -> None:
        super().__init__()
        self.runners = runners
        self.name, self.precision = runners[0].name, runners[0].precision
        self._pool: ThreadPoolExecutor | None = None

    def _activate(self) -> None:
        for runner in self.runners:
            runner.activate()
        self._inputs = self.runners[0].get_input_metadata()
        self._pool = ThreadPoolExecutor(max_workers=len(self.runners), thread_name_prefix="bench-split")

    def _deactivate(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for runner in self.runners:
            runner.deactivate()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._pool is not None
        parts = [{k: v[i] for k, v in ((k, np.array_split(np.asarray(v), len(self.runners))) for k, v in feed.items())}
                 for i in range(len(self.runners))]
        pairs = [(r, p) for r, p in zip(self.runners, parts) if len(next(iter(p.values())))]
        outs = list(self._pool.map(lambda rp: rp[0].infer(rp[1]), pairs))
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


class OpenVINODefaults(OpenVINORunner):
    """The artifact compiled by OpenVINO with its own defaults (no inference precision, hint or threads set)."""

    def config(self) -> dict[str, Any]:
        return {}


# ---- the rows of each backend ---------------------------------------------------------------------
def torch_row(backend: str, build: Callable[[str], Any], output_names: list[str], input_name: str, *,
              precision: str = "fp32", device: str = "cpu", compile_mode: str | None = None) -> BenchRow:
    runner = TorchRunner(backend, build, output_names, input_name, precision=precision, device=device,
                         compile_mode=compile_mode)
    variant = f"mode={compile_mode}" if backend == "pytorch-compile" and compile_mode else ""
    return BenchRow(runner, backend, precision, input_name, device, variant, describe=TorchRunner.info)


def onnxruntime_row(path: Path, input_name: str, *, precision: str = "fp32", device: str = "cpu", variant: str = "",
                    threads: int | None = None, sessions: int = 1) -> BenchRow:
    """One runner with ``threads`` intra-op threads; with ``sessions`` > 1, that many with ``threads // sessions`` each."""
    from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

    providers = ["cuda", "cpu"] if device.startswith("cuda") else ["cpu"]
    per = max(1, (threads or 1) // sessions) if sessions > 1 else threads
    runners = [OnnxRuntimeRunner(path, precision=precision, providers=providers, intra_op_threads=per, inter_op_threads=1)
               for _ in range(sessions)]

    def first(runner: Any) -> Any:
        return runner.runners[0] if isinstance(runner, SplitRunner) else runner

    def check(runner: Any) -> str:
        if device.startswith("cuda") and "CUDAExecutionProvider" not in first(runner).providers:
            raise RuntimeError(f"the CUDA provider did not load (session got {first(runner).providers})")
        return variant

    def describe(runner: Any) -> dict[str, Any]:
        return {"file": path.name, "providers": list(first(runner).providers),
                "session": {"intra_op_threads": per, "inter_op_threads": 1, "sessions": sessions,
                            "graph_optimization": "all", "allow_spinning": True}}

    runner = runners[0] if sessions == 1 else SplitRunner(runners)
    return BenchRow(runner, "onnxruntime", precision, input_name, device, variant, describe, check)


def openvino_rows(manifest: Any, input_name: str, threads: int,
                  wants: Callable[[str, str], bool]) -> tuple[list[BenchRow], str]:
    """The OpenVINO rows for these artifacts on this CPU, or none and the reason. ``variant`` says the
    inference precision the compiled model really ran; int8 runs at bf16 (where the CPU has it) and f32.
    The "OpenVINO defaults" rows compile the same files with no property set: on a BF16 CPU OpenVINO's
    default inference precision is bf16, so the FP32 graph's default row is labelled bf16."""
    from vitmsn.runtime.backends.cpu import bf16_capable
    from vitmsn.runtime.backends.registry import BACKENDS

    if not BACKENDS["openvino"].available():
        return [], "OpenVINO is not installed (pip install 'vitmsn[openvino]')"
    bf16 = bf16_capable()
    graphs = [("fp32", manifest.verify(manifest.precisions["fp32"]), ["f32"])]
    if bf16:
        graphs.append(("bf16", graphs[0][1], ["bf16"]))
    if "int8" in manifest.precisions:
        graphs.append(("int8", manifest.verify(manifest.precisions["int8"]), ["bf16", "f32"] if bf16 else ["f32"]))

    def describe(runner: Any) -> dict[str, Any]:
        own = {"openvino_version": runner.version, "threads": threads} if type(runner) is OpenVINORunner else {"via_vitmsn": False}
        return {"file": runner.path.name, "inference_precision": runner.inference_precision, **own}

    rows = [BenchRow(OpenVINORunner(path, precision=p, inference_precision=i, threads=threads), "openvino", p,
                     input_name, variant=f"inference {i}", describe=describe,
                     relabel=lambda r: f"inference {r.inference_precision}")
            for p, path, inference in graphs for i in inference if wants("openvino", p)]
    for p, path, _ in graphs:
        label = ("bf16" if bf16 else "fp32") if p in ("fp32", "bf16") else p
        if p != "bf16" and wants("openvino", label):
            rows.append(BenchRow(OpenVINODefaults(path, precision=label), "openvino", label, input_name,
                                 variant="OpenVINO defaults", describe=describe))
    return rows, ""


def tensorrt_row(path: Path, entry: Any, input_name: str) -> BenchRow:
    """An engine from the manifest: correctness through the runtime's runner; timing through
    :func:`vitmsn.bench.tensorrt_timing.time_engine` on that runner's engine."""
    from vitmsn.runtime.backends.tensorrt import TensorRTRunner

    return BenchRow(TensorRTRunner(path, entry), "tensorrt", entry.precision, input_name, "cuda", entry.target,
                    lambda runner: {"file": path.name, "target": entry.target,
                                    "tensorrt_version": entry.tensorrt_version, "verified": False})
