"""SIMULATION of the CUDA driver (``libcuda`` as vitmsn queries it through ctypes) and of
cuda-python's runtime API (``cuda.bindings.runtime``), for tests on machines without a GPU.

Nothing here is evidence that vitmsn works on a GPU. It implements exactly the calls vitmsn makes,
with CUDA's documented contracts, and it is stricter than a real GPU where a real GPU would
misbehave silently:

* calls return ``(cudaError_t, value)`` tuples as cuda-python does;
* device memory is a set of bounds-checked allocations at addresses that are never reused:
  a copy or kernel touching freed memory (use after free), past the end of an allocation, or a
  double free is recorded in ``SimState.violations``; what is still allocated at the end of a test
  is a leak (``SimState.leaks()``);
* pinned host memory is real host memory (the runner wraps it with ctypes); freed pinned blocks
  are kept alive so a use after free is recorded instead of crashing the test process;
* streams are queues: asynchronous copies and engine launches run when the stream is
  synchronised (or an event on it is), so results read before synchronising are stale, as on a GPU;
* the current device is per thread (``cudaSetDevice``), as in CUDA;
* faults can be injected: an allocation failure, an execute failure, the device lost (a sticky
  error that every later call returns).
"""

from __future__ import annotations

import ctypes
import enum
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .state import Allocation, Faults, SimGpu, SimHandle, SimState

__all__ = ["Allocation", "Faults", "SimGpu", "SimHandle", "SimState", "SimDriver", "cudart_module"]
ALIGN = 256


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorDevicesUnavailable = 46
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchFailure = 719
    cudaErrorStreamCaptureUnsupported = 900


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class SimDriver:
    """The CUDA driver as ``vitmsn.runtime.backends.device`` calls it through ctypes (``cuInit``,
    ``cuDeviceGetCount``, ...). Like the real driver it honours ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def _visible(self) -> list[int]:
        import os

        spec = os.environ.get("CUDA_VISIBLE_DEVICES")
        all_ids = list(range(len(self.state.gpus)))
        if spec is None:
            return all_ids
        out = []
        for part in spec.split(","):
            part = part.strip()
            if not part.isdigit() or int(part) not in all_ids:
                break  # the driver stops at the first invalid entry
            out.append(int(part))
        return out

    def cuInit(self, flags: int) -> int:
        return 0 if self.state.gpus else 100  # CUDA_ERROR_NO_DEVICE

    def cuDeviceGetCount(self, count: Any) -> int:
        count._obj.value = len(self._visible())
        return 0

    def cuDeviceGet(self, dev: Any, ordinal: int) -> int:
        visible = self._visible()
        if not 0 <= ordinal < len(visible):
            return 101
        dev._obj.value = visible[ordinal]
        return 0

    def cuDeviceGetName(self, buf: Any, size: int, dev: Any) -> int:
        ctypes.memmove(buf, self.state.gpus[dev.value].name.encode()[: size - 1] + b"\0",
                       min(size, len(self.state.gpus[dev.value].name) + 1))
        return 0

    def cuDeviceGetAttribute(self, out: Any, attribute: int, dev: Any) -> int:
        major, minor = self.state.gpus[dev.value].compute_capability.split(".")
        out._obj.value = int(major) if attribute == 75 else int(minor)
        return 0


def cudart_module(state: SimState) -> ModuleType:
    """A simulated ``cuda.bindings.runtime`` module bound to ``state``."""
    m = ModuleType("cuda.bindings.runtime")
    m.__doc__ = "SIMULATION of cuda-python's runtime API (tests only; see tests/trt_simulation)."
    m.cudaError_t, m.cudaMemcpyKind, m.cudaStreamCaptureMode = cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode
    m.cudaStreamNonBlocking = 1
    ok, E = cudaError_t.cudaSuccess, cudaError_t

    def lost() -> bool:
        return state.device_lost

    def api(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            with state.lock:
                return fn(*args)
        wrapper.__name__ = fn.__name__
        setattr(m, fn.__name__, wrapper)
        return wrapper

    def live_stream(stream: Any, what: str) -> SimHandle | None:
        ident = int(stream) if stream is not None else 0
        if ident == 0:
            return None  # the legacy default stream: synchronous here
        h = state.handles.get(ident)
        if h is None or h.kind != "stream" or not h.alive:
            state.violation(f"{what}: stream {ident} is not a live stream")
            raise _BadHandle
        return h

    def enqueue(stream: Any, work: Callable[[], None], what: str) -> cudaError_t:
        try:
            h = live_stream(stream, what)
        except _BadHandle:
            return E.cudaErrorInvalidResourceHandle
        if h is None:
            work()
        elif h.capture is not None:
            h.capture.append(work)
        else:
            h.queue.append(work)
        return ok

    def flush(h: SimHandle | None) -> None:
        if h is None:
            return
        work, h.queue = h.queue, []
        for w in work:
            w()

    m._sim_enqueue, m._sim_flush, m._sim_live_stream = enqueue, flush, live_stream  # for the TensorRT simulation

    @api
    def cudaGetDeviceCount() -> tuple:
        return ok, len(state.gpus)

    @api
    def cudaSetDevice(device: int) -> tuple:
        if lost():
            return (E.cudaErrorLaunchFailure,)
        if not 0 <= int(device) < len(state.gpus):
            return (E.cudaErrorInvalidDevice,)
        state.local.device = int(device)
        return (ok,)

    @api
    def cudaGetDevice() -> tuple:
        return ok, state.current_device()

    @api
    def cudaMalloc(nbytes: int) -> tuple:
        if lost():
            return E.cudaErrorLaunchFailure, 0
        if not state.gpus:
            return E.cudaErrorNoDevice, 0
        state.faults.mallocs += 1
        if state.faults.malloc_fails_at is not None and state.faults.mallocs == state.faults.malloc_fails_at:
            return E.cudaErrorMemoryAllocation, 0
        addr = state.next_address
        state.next_address += (max(int(nbytes), 1) + ALIGN - 1) // ALIGN * ALIGN + ALIGN  # a gap: overruns land nowhere
        state.allocations[addr] = Allocation(addr, int(nbytes), state.current_device(), np.zeros(int(nbytes), np.uint8))
        return ok, addr

    @api
    def cudaFree(ptr: int) -> tuple:
        a = state.allocations.get(int(ptr))
        if a is None or a.freed:
            state.violation(f"cudaFree({int(ptr):#x}): {'double free' if a else 'not an allocation'}")
            return (E.cudaErrorInvalidValue,)
        a.freed = True  # also after a lost device: the context is gone, the pointer must not be used again
        return (E.cudaErrorLaunchFailure,) if lost() else (ok,)

    @api
    def cudaMallocHost(nbytes: int) -> tuple:
        if lost():
            return E.cudaErrorLaunchFailure, 0
        data = np.zeros(max(int(nbytes), 1), np.uint8)
        addr = int(data.ctypes.data)
        state.pinned[addr] = Allocation(addr, int(nbytes), -1, data)
        return ok, addr

    @api
    def cudaFreeHost(ptr: int) -> tuple:
        a = state.pinned.get(int(ptr))
        if a is None or a.freed:
            state.violation(f"cudaFreeHost({int(ptr):#x}): {'double free' if a else 'not a pinned allocation'}")
            return (E.cudaErrorInvalidValue,)
        a.freed = True  # kept alive (not returned to the OS) so a use after free is recorded, not a crash
        return (E.cudaErrorLaunchFailure,) if lost() else (ok,)

    def copy(dst: int, src: int, nbytes: int, kind: int, what: str) -> Callable[[], None]:
        def work() -> None:
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                if state.check_host(src, nbytes, what):
                    state.write_device(dst, ctypes.string_at(int(src), nbytes), what)
            elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
                data = state.read_device(src, nbytes, what)
                if data is not None and state.check_host(dst, nbytes, what):
                    ctypes.memmove(int(dst), data, nbytes)
            elif kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
                data = state.read_device(src, nbytes, what)
                if data is not None:
                    state.write_device(dst, data, what)
            else:
                state.violation(f"{what}: copy kind {kind} is not simulated")
        return work

    @api
    def cudaMemcpyAsync(dst: int, src: int, nbytes: int, kind: int, stream: Any) -> tuple:
        if lost():
            return (E.cudaErrorLaunchFailure,)
        return (enqueue(stream, copy(dst, src, int(nbytes), int(kind), "cudaMemcpyAsync"), "cudaMemcpyAsync"),)

    @api
    def cudaMemcpy(dst: int, src: int, nbytes: int, kind: int) -> tuple:
        if lost():
            return (E.cudaErrorLaunchFailure,)
        for h in list(state.handles.values()):  # a synchronous copy waits for all blocking streams
            if h.kind == "stream" and h.alive:
                flush(h)
        copy(dst, src, int(nbytes), int(kind), "cudaMemcpy")()
        return (ok,)

    @api
    def cudaStreamCreate() -> tuple:
        if lost():
            return E.cudaErrorLaunchFailure, None
        return ok, state.handle("stream")

    @api
    def cudaStreamCreateWithFlags(flags: int) -> tuple:
        return cudaStreamCreate()

    @api
    def cudaStreamSynchronize(stream: Any) -> tuple:
        try:
            h = live_stream(stream, "cudaStreamSynchronize")
        except _BadHandle:
            return (E.cudaErrorInvalidResourceHandle,)
        if lost():
            if h is not None:
                h.queue.clear()
            return (E.cudaErrorLaunchFailure,)
        flush(h)
        return (E.cudaErrorLaunchFailure,) if lost() else (ok,)

    def destroy(handle: Any, kind: str, what: str) -> tuple:
        h = state.handles.get(int(handle)) if handle is not None else None
        if h is None or h.kind != kind or not h.alive:
            state.violation(f"{what}({handle!r}): not a live {kind}")
            return (E.cudaErrorInvalidResourceHandle,)
        h.alive = False
        h.queue.clear()
        return (E.cudaErrorLaunchFailure,) if lost() else (ok,)

    @api
    def cudaStreamDestroy(stream: Any) -> tuple:
        return destroy(stream, "stream", "cudaStreamDestroy")

    @api
    def cudaEventCreate() -> tuple:
        return ok, state.handle("event")

    @api
    def cudaEventDestroy(event: Any) -> tuple:
        return destroy(event, "event", "cudaEventDestroy")

    @api
    def cudaEventRecord(event: Any, stream: Any) -> tuple:
        def stamp() -> None:
            state.handles[int(event)].time_ms = state.next_handle * 0.01  # a monotone clock
        return (enqueue(stream, stamp, "cudaEventRecord"),)

    @api
    def cudaEventSynchronize(event: Any) -> tuple:
        for h in list(state.handles.values()):
            if h.kind == "stream" and h.alive:
                flush(h)
        return (E.cudaErrorLaunchFailure,) if lost() else (ok,)

    @api
    def cudaEventElapsedTime(start: Any, end: Any) -> tuple:
        return ok, 0.5  # simulated time carries no information

    @api
    def cudaStreamBeginCapture(stream: Any, mode: int) -> tuple:
        h = state.handles.get(int(stream))
        if h is None or not h.alive or h.capture is not None:
            return (E.cudaErrorInvalidValue,)
        if state.faults.capture_unsupported:
            return (E.cudaErrorStreamCaptureUnsupported,)
        h.capture = []
        return (ok,)

    @api
    def cudaStreamEndCapture(stream: Any) -> tuple:
        h = state.handles.get(int(stream))
        if h is None or h.capture is None:
            return E.cudaErrorInvalidValue, None
        g = state.handle("graph")
        g.ops, h.capture = h.capture, None
        return ok, g

    @api
    def cudaGraphInstantiate(graph: Any, flags: int = 0) -> tuple:
        g = state.handles.get(int(graph))
        if g is None or not g.alive:
            return E.cudaErrorInvalidValue, None
        exe = state.handle("graph_exec")
        exe.ops = list(g.ops)
        return ok, exe

    @api
    def cudaGraphLaunch(exe: Any, stream: Any) -> tuple:
        ops = state.handles[int(exe)].ops

        def replay() -> None:
            for op in ops:
                op()
        return (enqueue(stream, replay, "cudaGraphLaunch"),)

    @api
    def cudaGraphDestroy(graph: Any) -> tuple:
        return destroy(graph, "graph", "cudaGraphDestroy")

    @api
    def cudaGraphExecDestroy(exe: Any) -> tuple:
        return destroy(exe, "graph_exec", "cudaGraphExecDestroy")

    return m


class _BadHandle(Exception):
    pass
