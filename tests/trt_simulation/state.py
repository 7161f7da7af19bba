"""SIMULATION state: the simulated GPUs, device and pinned allocations, handles, injected faults,
and what the simulation recorded (violations, leaks, counters). See ``cuda.py``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

BASE_ADDRESS = 0x7F00_0000_0000


@dataclass(frozen=True)
class SimGpu:
    name: str
    compute_capability: str  # "8.6"
    memory_bytes: int = 8 << 30


@dataclass
class Faults:
    """Injected faults, counted from when they are set (1 = the next call)."""

    malloc_fails_at: int | None = None  # the n-th cudaMalloc returns cudaErrorMemoryAllocation
    execute_fails_at: int | None = None  # the n-th execute_async_v3 returns False
    device_lost_at_execute: int | None = None  # the n-th execute_async_v3 loses the device (sticky error)
    refuse_compute_capability: bool = False  # IBuilderConfig.set_compute_capability returns False
    capture_unsupported: bool = False  # cudaStreamBeginCapture fails (an engine that cannot be captured)
    mallocs: int = 0
    executes: int = 0


@dataclass
class Allocation:
    address: int
    nbytes: int
    device: int
    data: np.ndarray  # uint8 backing store
    freed: bool = False


class SimHandle:
    """A stream/event/graph handle; ``int()`` gives its id, as cuda-python's handle types do."""

    def __init__(self, kind: str, ident: int) -> None:
        self.kind, self.ident, self.alive = kind, ident, True
        self.queue: list[Callable[[], None]] = []  # streams: work waiting for a synchronisation
        self.capture: list[Callable[[], None]] | None = None  # streams being captured into a graph
        self.ops: list[Callable[[], None]] = []  # graphs and graph executables
        self.time_ms = 0.0  # events

    def __int__(self) -> int:
        return self.ident

    def __repr__(self) -> str:
        return f"<simulated {self.kind} {self.ident}{'' if self.alive else ' (destroyed)'}>"


@dataclass
class SimState:
    """Everything the simulated GPU holds; one per test (``install`` creates it)."""

    gpus: tuple[SimGpu, ...] = ()
    faults: Faults = field(default_factory=Faults)
    allocations: dict[int, Allocation] = field(default_factory=dict)
    pinned: dict[int, Allocation] = field(default_factory=dict)
    handles: dict[int, SimHandle] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # TensorRT log lines (errors and warnings)
    device_lost: bool = False
    jit_compilations: int = 0  # TensorRT-RTX kernel compilations at context creation
    deserializations: int = 0
    on_build: Callable[[], None] | None = None  # called by the simulated builder mid-build (tests' hook)
    next_address: int = BASE_ADDRESS
    next_handle: int = 1
    lock: threading.RLock = field(default_factory=threading.RLock)
    local: threading.local = field(default_factory=threading.local)

    # ---- bookkeeping ---------------------------------------------------------------------
    def current_device(self) -> int:
        return getattr(self.local, "device", 0)

    def violation(self, what: str) -> None:
        self.violations.append(what)

    def leaks(self) -> list[str]:
        out = [f"device allocation {a.address:#x} ({a.nbytes} B)" for a in self.allocations.values() if not a.freed]
        out += [f"pinned host allocation {a.address:#x} ({a.nbytes} B)" for a in self.pinned.values() if not a.freed]
        out += [repr(h) for h in self.handles.values() if h.alive]
        return out

    def handle(self, kind: str) -> SimHandle:
        h = SimHandle(kind, self.next_handle)
        self.next_handle += 1
        self.handles[h.ident] = h
        return h

    def find(self, ptr: int, nbytes: int, what: str) -> tuple[Allocation, int] | None:
        """The device allocation holding ``[ptr, ptr + nbytes)``; records a violation otherwise."""
        ptr = int(ptr)
        for a in self.allocations.values():
            if a.address <= ptr < a.address + max(a.nbytes, 1):
                if a.freed:
                    self.violation(f"{what}: use after free of device allocation {a.address:#x}")
                    return None
                if ptr + nbytes > a.address + a.nbytes:
                    self.violation(f"{what}: {nbytes} B at {ptr:#x} overruns the {a.nbytes} B allocation {a.address:#x}")
                    return None
                return a, ptr - a.address
        self.violation(f"{what}: {ptr:#x} is not device memory")
        return None

    def read_device(self, ptr: int, nbytes: int, what: str) -> bytes | None:
        found = self.find(ptr, nbytes, what)
        if found is None:
            return None
        a, off = found
        return a.data[off:off + nbytes].tobytes()

    def write_device(self, ptr: int, data: bytes, what: str) -> bool:
        found = self.find(ptr, len(data), what)
        if found is None:
            return False
        a, off = found
        a.data[off:off + len(data)] = np.frombuffer(data, np.uint8)
        return True

    def check_host(self, ptr: int, nbytes: int, what: str) -> bool:
        """Pinned memory is bounds-checked; other host pointers are pageable memory (allowed)."""
        ptr = int(ptr)
        for a in self.pinned.values():
            if a.address <= ptr < a.address + max(a.nbytes, 1):
                if a.freed:
                    self.violation(f"{what}: use after free of pinned host memory {a.address:#x}")
                    return False
                if ptr + nbytes > a.address + a.nbytes:
                    self.violation(f"{what}: {nbytes} B overruns pinned block {a.address:#x} ({a.nbytes} B)")
                    return False
        return True
