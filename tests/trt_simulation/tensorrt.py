"""SIMULATION of the TensorRT / TensorRT-RTX runtime (``tensorrt`` and ``tensorrt_rtx`` modules)
for tests on machines without a GPU. Never evidence that an engine runs on a GPU.

What is real and what is simulated:

* The builder is REAL: ``Builder``, ``OnnxParser``, profiles, flags and enums are TensorRT-RTX's
  own Python bindings (they build ahead of time on a CPU). A simulated ``tensorrt`` module uses
  them too, as a TensorRT 11 stand-in (no FP16/INT8 builder flags), building for SM86.
* The engine file is a SIMULATED serialized format (the choice documented in ``__init__``): a
  magic line, a JSON header (target, release, compute capabilities, version/hardware
  compatibility, optimization profile, the SHA-256 of the real plan the real builder produced)
  and the source ONNX bytes. The network runs by executing that ONNX with ONNX Runtime.
* ``Runtime``, ``ICudaEngine``, ``IExecutionContext`` and TensorRT-RTX's ``IRuntimeConfig`` /
  ``IRuntimeCache`` are simulated with TensorRT's documented behaviour and failure modes:
  deserialization fails (None, error logged) on another release, another GPU architecture, no GPU,
  or a version-compatible engine without ``engine_host_code_allowed``; ``set_input_shape``
  returns False outside the optimization profile; ``execute_async_v3`` returns False unless every
  input shape and every I/O tensor address is set, addresses must lie in live device allocations
  large enough for the tensor, the current device must be the engine's, and a data-dependent output
  needs an output allocator; TensorRT-RTX compiles kernels at context creation unless its runtime
  cache holds them (counted in ``SimState.jit_compilations``).
* The builder's timing cache (``tensorrt`` target) is simulated: entries per built network, a
  device header that ``set_timing_cache``/``combine`` check unless told to ignore mismatches.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import struct
import sys
from types import ModuleType
from typing import Any

import numpy as np

from .cuda import SimState

MAGIC = b"VITMSN-SIMULATED-TENSORRT-ENGINE\n"
SIM_TENSORRT_VERSION = "11.4.0.1"
_ONNX_DTYPES = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int8)": "INT8", "tensor(int32)": "INT32",
                "tensor(int64)": "INT64", "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8"}
_TIMING_MAGIC = b"SIMULATED-TIMING-CACHE\n"
_RUNTIME_MAGIC = b"SIMULATED-RTX-RUNTIME-CACHE\n"


def write_plan(header: dict[str, Any], onnx_bytes: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + onnx_bytes


def read_plan(plan: bytes) -> tuple[dict[str, Any], bytes] | None:
    plan = bytes(plan)
    if not plan.startswith(MAGIC):
        return None
    (n,) = struct.unpack_from("<Q", plan, len(MAGIC))
    start = len(MAGIC) + 8
    return json.loads(plan[start:start + n]), plan[start + n:]


def _vt(v: str) -> tuple[int, ...]:
    import re

    return tuple(int(p) for p in re.findall(r"\d+", v))[:3]


def tensorrt_module(state: SimState, real: ModuleType, target: str) -> ModuleType:
    """A simulated ``tensorrt`` (target "tensorrt") or ``tensorrt_rtx`` (target "tensorrt-rtx") module."""
    is_rtx = target == "tensorrt-rtx"
    name = "tensorrt_rtx" if is_rtx else "tensorrt"
    m = ModuleType(name)
    m.__doc__ = f"SIMULATION of {name} (tests only; see tests/trt_simulation). Builder: the real TensorRT-RTX bindings."
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__version__ = str(real.__version__) if is_rtx else SIM_TENSORRT_VERSION
    m.SIMULATION = True
    for attr in ("DataType", "TensorIOMode", "nptype", "Dims", "MemoryPoolType", "BuilderFlag", "ILogger", "Logger",
                 "NetworkDefinitionCreationFlag", "IProgressMonitor", "HardwareCompatibilityLevel"):
        if hasattr(real, attr):
            setattr(m, attr, getattr(real, attr))
    if is_rtx:
        m.ComputeCapability, m.EngineValidity = real.ComputeCapability, real.EngineValidity
    parsed: dict[int, bytes] = {}

    def log(severity: str, msg: str) -> None:
        state.log.append(f"{severity}: {msg}")
        if severity == "ERROR":
            sys.stderr.write(f"[simulated {name}] ERROR: {msg}\n")

    # ---- builder (real bindings, simulated plan format and timing cache) -------------------
    class OnnxParser:
        def __init__(self, network: Any, logger: Any) -> None:
            self._real, self._network = real.OnnxParser(network, logger), network

        def parse_from_file(self, path: str) -> bool:
            with open(path, "rb") as f:
                parsed[id(self._network)] = f.read()
            return bool(self._real.parse_from_file(path))

        def parse(self, data: bytes) -> bool:
            parsed[id(self._network)] = bytes(data)
            return bool(self._real.parse(data))

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._real, attr)

    class TimingCache:
        def __init__(self, entries: set[str], device: str) -> None:
            self.entries, self.device = set(entries), device

        def serialize(self) -> bytes:
            return _TIMING_MAGIC + json.dumps({"device": self.device, "entries": sorted(self.entries)}).encode()

        def combine(self, other: "TimingCache", ignore_mismatch: bool) -> bool:
            if other.device != self.device and not ignore_mismatch:
                log("WARNING", "timing cache header mismatch: not combined")
                return False
            self.entries |= other.entries
            return True

    def current_gpu_name() -> str:
        return state.gpus[state.current_device()].name if state.gpus else "none"

    class BuilderConfig:
        def __init__(self, real_config: Any) -> None:
            object.__setattr__(self, "_real", real_config)
            object.__setattr__(self, "_sim", {"ccs": [], "timing": None, "flags": set(), "hardware": None, "profiles": []})

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._real, attr)

        def __setattr__(self, attr: str, value: Any) -> None:
            if attr == "hardware_compatibility_level" and not is_rtx:
                self._sim["hardware"] = str(value)
                return
            setattr(self._real, attr, value)

        def set_flag(self, flag: Any) -> None:
            if not is_rtx and flag == real.BuilderFlag.VERSION_COMPATIBLE:
                self._sim["flags"].add("VERSION_COMPATIBLE")
                return
            self._real.set_flag(flag)

        def add_optimization_profile(self, profile: Any) -> int:
            self._sim["profiles"].append(profile)
            return self._real.add_optimization_profile(profile)

        def set_compute_capability(self, cc: Any, index: int) -> bool:
            if state.faults.refuse_compute_capability:
                log("ERROR", f"setComputeCapability({cc}, {index}) refused")
                return False
            ok = bool(self._real.set_compute_capability(cc, index))
            if ok:
                self._sim["ccs"].append(cc.name)
            return ok

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            blob = bytes(blob)
            if blob.startswith(_TIMING_MAGIC):
                d = json.loads(blob[len(_TIMING_MAGIC):])
                return TimingCache(set(d["entries"]), d["device"])
            if blob:
                log("WARNING", "timing cache blob is not valid; starting an empty cache")
            return TimingCache(set(), current_gpu_name())

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.device != current_gpu_name() and not ignore_mismatch:
                log("ERROR", "timing cache was created on another device")
                return False
            self._sim["timing"] = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self._sim["timing"]

    class Builder:
        def __init__(self, logger: Any) -> None:
            self._real = real.Builder(logger)

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._real, attr)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig(self._real.create_builder_config())

        def build_serialized_network(self, network: Any, config: BuilderConfig) -> bytes | None:
            onnx_bytes = parsed.get(id(network))
            if onnx_bytes is None:
                log("ERROR", "simulation: the network was not parsed from ONNX")
                return None
            sim = config._sim
            if is_rtx:
                ccs = sim["ccs"] or ["CURRENT"]
                if "CURRENT" in ccs:
                    if not state.gpus:
                        log("ERROR", "CUDA initialization failure with error: 35 (ComputeCapability.CURRENT needs a GPU)")
                        return None
                    ccs = [f"SM{state.gpus[state.current_device()].compute_capability.replace('.', '')}"]
                capabilities = [f"{c[2:-1]}.{c[-1]}" for c in ccs]
            else:
                if not state.gpus:
                    log("ERROR", "CUDA initialization failure with error: 35 (TensorRT builds need a GPU)")
                    return None
                capabilities = [state.gpus[state.current_device()].compute_capability]
                config._real.num_compute_capabilities = 1  # the stand-in compile with the real RTX builder
                config._real.set_compute_capability(real.ComputeCapability.SM86, 0)
            if state.on_build is not None:
                state.on_build()  # a test's hook: what another process does while this build runs
            real_plan = self._real.build_serialized_network(network, config._real)
            if real_plan is None:
                return None
            real_bytes = bytes(memoryview(real_plan))
            profile = {}
            for i in range(network.num_inputs):
                tensor_name = network.get_input(i).name
                profile[tensor_name] = [[int(d) for d in dims] for dims in sim["profiles"][0].get_shape(tensor_name)]
            if sim["timing"] is not None:
                sim["timing"].entries.add(hashlib.sha256(onnx_bytes).hexdigest()[:16])
            header = {"target": target, "version": m.__version__, "compute_capabilities": capabilities,
                      "version_compatible": "VERSION_COMPATIBLE" in sim["flags"],
                      "hardware_compatible": sim["hardware"] is not None, "profile": profile,
                      "real_plan_sha256": hashlib.sha256(real_bytes).hexdigest(), "real_plan_bytes": len(real_bytes)}
            return write_plan(header, onnx_bytes)

    m.Builder, m.OnnxParser = Builder, OnnxParser

    # ---- runtime (simulated) --------------------------------------------------------------
    from .engine import make_runtime_classes

    make_runtime_classes(m, state, real, target, log)
    return m
