"""SIMULATION of TensorRT's ``Runtime``, ``ICudaEngine`` and ``IExecutionContext`` (and TensorRT-RTX's
runtime configuration and runtime cache). See ``tensorrt.py`` for what is real and what is not."""

from __future__ import annotations

import hashlib
import json
import weakref
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .cuda import SimState
from .tensorrt import _RUNTIME_MAGIC, _ONNX_DTYPES, _vt, read_plan

LIVE_OBJECTS: "weakref.WeakSet[Any]" = weakref.WeakSet()  # engines and contexts not yet garbage-collected


def make_runtime_classes(m: ModuleType, state: SimState, real: ModuleType, target: str,
                         log: Callable[[str, str], None]) -> None:
    is_rtx = target == "tensorrt-rtx"
    DataType, IOMode = real.DataType, real.TensorIOMode

    def _check_destroyed_on(device: int, what: str) -> None:
        # TensorRT objects must be destroyed with the device they were created on current
        if not state.device_lost and state.current_device() != device:
            state.violation(f"{what} created on device {device} destroyed while device {state.current_device()} "
                            "was current")

    class RuntimeCache:
        def __init__(self) -> None:
            self.kernels: set[str] = set()

        def serialize(self) -> bytes:
            return _RUNTIME_MAGIC + json.dumps({"version": m.__version__, "kernels": sorted(self.kernels)}).encode()

        def deserialize(self, blob: bytes) -> bool:
            blob = bytes(blob)
            if not blob.startswith(_RUNTIME_MAGIC):
                return False
            d = json.loads(blob[len(_RUNTIME_MAGIC):])
            if d.get("version") != m.__version__:
                return False  # another release: rejected, cache unchanged
            self.kernels |= set(d["kernels"])
            return True

    class RuntimeConfig:
        def __init__(self) -> None:
            self.cache: RuntimeCache | None = None

        def create_runtime_cache(self) -> RuntimeCache:
            return RuntimeCache()

        def set_runtime_cache(self, cache: RuntimeCache) -> bool:
            self.cache = cache
            return True

        def get_runtime_cache(self) -> RuntimeCache | None:
            return self.cache

    class Engine:
        def __init__(self, header: dict[str, Any], onnx_bytes: bytes, device: int) -> None:
            import onnxruntime as ort

            self.header, self.device = header, device
            self.key = hashlib.sha256(onnx_bytes).hexdigest()[:16]
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
            self.io: dict[str, tuple[Any, Any, tuple[int, ...]]] = {}
            dd = set(header.get("data_dependent_outputs", []))
            for mode, values in ((IOMode.INPUT, self.session.get_inputs()), (IOMode.OUTPUT, self.session.get_outputs())):
                for v in values:
                    shape = tuple(d if isinstance(d, int) else -1 for d in v.shape)
                    if v.name in dd:
                        shape = tuple(-1 for _ in shape)
                    self.io[v.name] = (mode, getattr(DataType, _ONNX_DTYPES[v.type]), shape)
            self.names = list(self.io)
            self.profile = {k: [tuple(s) for s in v] for k, v in header["profile"].items()}
            self.num_optimization_profiles = 1
            LIVE_OBJECTS.add(self)

        def __del__(self) -> None:
            _check_destroyed_on(self.device, "ICudaEngine")

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return self.io[name][0] if name in self.io else IOMode.NONE

        def get_tensor_dtype(self, name: str) -> Any:
            return self.io[name][1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.io[name][2]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            if profile_index != 0 or name not in self.profile:
                raise RuntimeError(f"simulated TensorRT: no profile {profile_index} shapes for {name!r}")
            return list(self.profile[name])

        def create_execution_context(self, runtime_config: Any = None) -> "Context | None":
            if state.device_lost:
                log("ERROR", "createExecutionContext: CUDA error 719")
                return None
            if is_rtx:
                cache = runtime_config.cache if runtime_config is not None else None
                kernel = f"{self.key}:{state.gpus[self.device].compute_capability}"
                if cache is None or kernel not in cache.kernels:
                    state.jit_compilations += 1
                    if cache is not None:
                        cache.kernels.add(kernel)
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            LIVE_OBJECTS.add(self)

        def __del__(self) -> None:
            _check_destroyed_on(self.engine.device, "IExecutionContext")

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            return index == 0

        def set_input_shape(self, name: str, shape: Any) -> bool:
            io = self.engine.io.get(name)
            if io is None or io[0] != IOMode.INPUT:
                log("ERROR", f"setInputShape: {name!r} is not an input tensor")
                return False
            shape = tuple(int(d) for d in shape)
            lo, _, hi = self.engine.profile[name]
            if len(shape) != len(io[2]) or any(s != d for s, d in zip(shape, io[2]) if d >= 0):
                log("ERROR", f"setInputShape: {shape} does not match the static dimensions of {io[2]}")
                return False
            if any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
                log("ERROR", f"setInputShape: {name} {shape} is outside the optimization profile {lo}..{hi}")
                return False
            self.shapes[name] = shape
            return True

        def _inputs(self) -> list[str]:
            return [n for n, io in self.engine.io.items() if io[0] == IOMode.INPUT]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            mode, _, shape = self.engine.io[name]
            if mode == IOMode.INPUT:
                return self.shapes.get(name, shape)
            first = self._inputs()[0]
            if first not in self.shapes or name in self.engine.header.get("data_dependent_outputs", []):
                return shape
            return tuple(self.shapes[first][0] if d < 0 and i == 0 else d for i, d in enumerate(shape))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if name not in self.engine.io:
                log("ERROR", f"setTensorAddress: {name!r} is not an I/O tensor")
                return False
            self.addresses[name] = int(ptr)
            return True

        def get_tensor_address(self, name: str) -> int:
            return self.addresses.get(name, 0)

        def execute_async_v3(self, stream_handle: int) -> bool:
            f = state.faults
            with state.lock:
                f.executes += 1
                if state.device_lost:
                    log("ERROR", "enqueueV3: CUDA error 719 (device lost)")
                    return False
                if f.device_lost_at_execute is not None and f.executes == f.device_lost_at_execute:
                    state.device_lost = True
                    log("ERROR", "enqueueV3: CUDA error 719 (simulated: the device was lost)")
                    return False
                if f.execute_fails_at is not None and f.executes == f.execute_fails_at:
                    log("ERROR", "enqueueV3: simulated execution failure")
                    return False
                if state.current_device() != self.engine.device:
                    log("ERROR", f"enqueueV3: current device {state.current_device()} is not the engine's "
                                 f"device {self.engine.device}")
                    return False
                missing = [n for n in self._inputs() if n not in self.shapes]
                if missing:
                    log("ERROR", f"enqueueV3: input shape of {missing[0]!r} not specified")
                    return False
                unset = [n for n in self.engine.names if n not in self.addresses]
                if unset:
                    log("ERROR", f"enqueueV3: neither address nor allocator is set for tensor {unset[0]!r}")
                    return False
                shapes = {n: self.get_tensor_shape(n) for n in self.engine.names}
                dynamic = [n for n, s in shapes.items() if any(d < 0 for d in s)]
                if dynamic:
                    log("ERROR", f"enqueueV3: output {dynamic[0]!r} has a data-dependent shape and no output allocator")
                    return False
                sizes = {}
                for n, s in shapes.items():
                    dtype = np.dtype(real.nptype(self.engine.io[n][1]))
                    sizes[n] = (dtype, s, int(np.prod(s)) * dtype.itemsize)
                    if state.find(self.addresses[n], sizes[n][2], f"enqueueV3 tensor {n}") is None:
                        return False
                addresses = dict(self.addresses)
                engine = self.engine

                def run() -> None:
                    feeds = {}
                    for n in self._inputs():
                        dtype, s, nbytes = sizes[n]
                        data = state.read_device(addresses[n], nbytes, f"kernel reading {n}")
                        if data is None:
                            return
                        feeds[n] = np.frombuffer(data, dtype).reshape(s)
                    outs = engine.session.run(None, feeds)
                    for o, value in zip(engine.session.get_outputs(), outs):
                        dtype, s, nbytes = sizes[o.name]
                        if tuple(value.shape) != s:
                            state.violation(f"simulation: output {o.name} shape {value.shape} != {s}")
                            return
                        state.write_device(addresses[o.name], np.ascontiguousarray(value, dtype).tobytes(),
                                           f"kernel writing {o.name}")

                from cuda.bindings import runtime as cudart  # the simulated module, installed with this one

                err = cudart._sim_enqueue(stream_handle, run, "enqueueV3")
                return int(err) == 0

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            self.engine_host_code_allowed = False

        def _problem(self, plan: bytes) -> tuple[str | None, dict[str, Any] | None, bytes]:
            got = read_plan(plan)
            if got is None:
                return "the serialized engine is not in the simulated format (magic tag mismatch)", None, b""
            header, onnx_bytes = got
            if header["target"] != target:
                return f"the engine was built by {header['target']}, not {target}", header, onnx_bytes
            built, running = _vt(header["version"]), _vt(m.__version__)
            if built != running:
                compatible = header.get("version_compatible") and not is_rtx and running >= built and (
                    running[0] == built[0] or (built[0], running[0]) == (10, 11))
                if not compatible:
                    return (f"the engine was built with {target} {header['version']} and cannot be deserialized by "
                            f"{m.__version__}"), header, onnx_bytes
            if header.get("version_compatible") and not self.engine_host_code_allowed:
                return ("a version-compatible engine contains host code (the lean runtime); set "
                        "Runtime.engine_host_code_allowed = True to deserialize it"), header, onnx_bytes
            if not state.gpus:
                return "CUDA initialization failure with error: 35", header, onnx_bytes
            cc = state.gpus[state.current_device()].compute_capability
            ok = cc in header["compute_capabilities"] or (header.get("hardware_compatible") and _vt(cc) >= (8, 0))
            if not ok:
                return (f"the engine was built for compute capability {header['compute_capabilities']}, "
                        f"the current device is {cc}"), header, onnx_bytes
            return None, header, onnx_bytes

        def deserialize_cuda_engine(self, plan: Any) -> Engine | None:
            problem, header, onnx_bytes = self._problem(bytes(plan))
            if problem is not None:
                log("ERROR", f"deserializeCudaEngine: {problem}")
                return None
            assert header is not None
            state.deserializations += 1
            return Engine(header, onnx_bytes, state.current_device())

    if is_rtx:
        Engine.create_runtime_config = lambda self: RuntimeConfig()  # type: ignore[attr-defined]

        def get_engine_validity(self: Runtime, plan: Any) -> tuple[Any, int]:
            problem, _, _ = self._problem(bytes(plan))
            return (real.EngineValidity.INVALID if problem else real.EngineValidity.VALID), (1 if problem else 0)

        Runtime.get_engine_validity = get_engine_validity  # type: ignore[attr-defined]
        m.IRuntimeConfig, m.IRuntimeCache = RuntimeConfig, RuntimeCache
    m.Runtime, m.ICudaEngine, m.IExecutionContext = Runtime, Engine, Context
