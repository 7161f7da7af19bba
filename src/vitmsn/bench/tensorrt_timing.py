"""Timing a TensorRT engine the way a TensorRT user measures it (trtexec's method).

UNVERIFIED: written against the TensorRT 10/11 (and TensorRT-RTX) Python API and cuda-python
12/13, but no session that worked on it had a GPU with TensorRT, so it has never run. Every
report row it produces says so (``"verified": false``).

* **Latency** is GPU time per inference from CUDA events recorded around each launch on one
  stream (``cudaEventElapsedTime``), with the input already on the device: what trtexec calls
  "GPU Compute Time". Host-side copies are the end-to-end mode's business.
* **CUDA graphs**: when the stream-capture API is there (``cudaStreamBeginCapture``), each
  context's ``execute_async_v3`` is captured once and replayed with ``cudaGraphLaunch``, which
  removes the per-launch CPU overhead that dominates small batches. If capture fails (some
  engines/plugins cannot be captured) it falls back to plain enqueues and notes why.
* **Concurrency**: ``streams`` execution contexts, each with its own stream and buffers, are
  launched round-robin; throughput is images over wall time until every stream is synchronised.
  Contexts share optimization profile 0; where TensorRT refuses that, fewer streams are used.

The API is feature-detected (``hasattr``), never chosen by version strings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np


from .timing import LatencyStats, TimingPlan

if TYPE_CHECKING:  # mypy checks the TensorRT calls against tensorrt-stubs; at run time the module is chosen by target
    import tensorrt as trt


@dataclass
class EngineTiming:
    latency: LatencyStats
    throughput: float
    streams: int
    cuda_graph: bool
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {"timing": "cuda-events", "streams": self.streams, "cuda_graph": self.cuda_graph,
                "verified": False, "notes": self.notes}


def _dims(dims: Any) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (the stubs do not declare it iterable)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class _Context:
    """One execution context with its stream, device buffers and (optionally) a captured graph."""

    def __init__(self, trt_module: Any, cudart: Any, engine: "trt.ICudaEngine", x: np.ndarray, context: Any) -> None:
        from vitmsn.runtime.backends.tensorrt import check_cuda

        self.cudart, self.check = cudart, check_cuda
        self.buffers: list[Any] = []
        self.graph_exec: Any = None
        self.graph: Any = None
        self.stream: Any = None
        self.context: "trt.IExecutionContext | None" = context
        flags = getattr(cudart, "cudaStreamNonBlocking", 1)
        self.stream = check_cuda(cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        try:
            self._bind(trt_module, engine, x)
        except BaseException:
            self.free()
            raise

    def _bind(self, trt_module: Any, engine: "trt.ICudaEngine", x: np.ndarray) -> None:
        """Profile 0, the input shape, and a device buffer for every I/O tensor (input filled with ``x``)."""
        from vitmsn.runtime.backends.tensorrt import np_dtype

        cudart, context = self.cudart, self.context
        assert context is not None
        if engine.num_optimization_profiles > 1 and hasattr(context, "set_optimization_profile_async"):
            if not context.set_optimization_profile_async(0, int(self.stream)):
                raise RuntimeError("TensorRT refused optimization profile 0 for another context")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt_module.TensorIOMode.INPUT]
        for name in inputs:
            data = np.ascontiguousarray(x, dtype=np_dtype(trt_module, engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, data.shape):
                raise RuntimeError(f"engine rejected input shape {data.shape} for {name}")
            ptr = self._alloc(data.nbytes)
            h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self.check(cudart.cudaMemcpy(ptr, data.ctypes.data, data.nbytes, h2d), "cudaMemcpy H2D")
            context.set_tensor_address(name, int(ptr))
        for name in (n for n in names if n not in inputs):  # output shapes are known once the inputs' are set
            shape = _dims(context.get_tensor_shape(name))
            size = int(np.prod(shape)) * np_dtype(trt_module, engine.get_tensor_dtype(name)).itemsize
            context.set_tensor_address(name, int(self._alloc(max(size, 1))))

    def _alloc(self, nbytes: int) -> Any:
        ptr = self.check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        self.buffers.append(ptr)
        return ptr

    def enqueue(self) -> None:
        assert self.context is not None
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("execute_async_v3 failed (see the TensorRT log)")

    def capture(self) -> None:
        """Capture one enqueue into a CUDA graph (after at least one plain enqueue)."""
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        try:
            self.enqueue()
        finally:
            self.graph = self.check(cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        try:
            self.graph_exec = self.check(cudart.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")
        except TypeError:  # older cuda-python: (graph, error_node_buffer, log_buffer, buffer_size)
            self.graph_exec = self.check(cudart.cudaGraphInstantiate(self.graph, None, None, 0), "cudaGraphInstantiate")

    def launch(self) -> None:
        if self.graph_exec is not None:
            self.check(self.cudart.cudaGraphLaunch(self.graph_exec, self.stream), "cudaGraphLaunch")
        else:
            self.enqueue()

    def synchronize(self) -> None:
        self.check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self) -> None:
        cudart = self.cudart
        if self.stream is not None:
            self.synchronize()
        if self.graph_exec is not None:
            cudart.cudaGraphExecDestroy(self.graph_exec)
        if self.graph is not None:
            cudart.cudaGraphDestroy(self.graph)
        for ptr in self.buffers:
            cudart.cudaFree(ptr)
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.buffers, self.graph_exec, self.graph, self.stream, self.context = [], None, None, None, None


def _event_latencies(ctx: _Context, n: int) -> list[float]:
    from vitmsn.runtime.backends.tensorrt import check_cuda

    cudart = ctx.cudart
    start = check_cuda(cudart.cudaEventCreate(), "cudaEventCreate")
    end = check_cuda(cudart.cudaEventCreate(), "cudaEventCreate")
    out = []
    try:
        for _ in range(n):
            check_cuda(cudart.cudaEventRecord(start, ctx.stream), "cudaEventRecord")
            ctx.launch()
            check_cuda(cudart.cudaEventRecord(end, ctx.stream), "cudaEventRecord")
            check_cuda(cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
            out.append(float(check_cuda(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")))
    finally:
        cudart.cudaEventDestroy(start)
        cudart.cudaEventDestroy(end)
    return out


def time_engine(runner: Any, input_name: str, batch: int, plan: TimingPlan, *,
                streams: int = 2, cuda_graphs: bool = True, seed: int = 0) -> EngineTiming:
    """Time the engine of an ACTIVE :class:`~vitmsn.runtime.backends.tensorrt.TensorRTRunner`: its
    deserialized engine is reused (checked once against this machine, deserialized once, and for
    TensorRT-RTX compiled once), with timing contexts of its own on the runner's device."""
    from vitmsn.runtime.backends.tensorrt import check_cuda

    trt_module, cudart, engine = runner.engine_handles()
    check_cuda(cudart.cudaSetDevice(runner.gpu_index), "cudaSetDevice")
    shape = [batch, *_dims(engine.get_tensor_shape(input_name))[1:]]
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    notes: list[str] = []
    contexts: list[_Context] = []
    try:
        for i in range(max(1, streams)):
            try:
                contexts.append(_Context(trt_module, cudart, engine, x, runner.create_context()))
            except RuntimeError as exc:
                if not contexts:
                    raise
                notes.append(f"only {len(contexts)} of {streams} contexts: {exc}")
                break
        for ctx in contexts:
            for _ in range(max(1, plan.warmup)):
                ctx.enqueue()  # also the enqueue TensorRT needs before a capture after a shape change
            ctx.synchronize()
        use_graph = cuda_graphs and hasattr(cudart, "cudaStreamBeginCapture")
        if cuda_graphs and not use_graph:
            notes.append("CUDA graphs: cuda-python lacks cudaStreamBeginCapture; plain enqueues")
        if use_graph:
            try:
                for ctx in contexts:
                    ctx.capture()
            except (RuntimeError, AttributeError) as exc:
                use_graph = False
                notes.append(f"CUDA graph capture failed ({exc}); plain enqueues")
                for ctx in contexts:
                    ctx.graph_exec = None
        samples = _event_latencies(contexts[0], max(plan.iterations, 1))
        rounds = max(plan.iterations, 1)
        start = time.perf_counter()
        for _ in range(rounds):
            for ctx in contexts:
                ctx.launch()
        for ctx in contexts:
            ctx.synchronize()
        wall = time.perf_counter() - start
        throughput = rounds * len(contexts) * batch / wall
    finally:
        for ctx in contexts:
            ctx.free()
    return EngineTiming(LatencyStats(samples), throughput, len(contexts), use_graph, notes)
