"""TensorRT engine backend (``tensorrt`` or ``tensorrt_rtx``), buffers and streams via cuda-python.

Activation: check the engine against this machine (release, the architecture of the runner's own
GPU ``gpu_index``; see ``engine_check``), select that GPU, deserialize (allowing engine host code
for a version-compatible engine, which TensorRT otherwise refuses), create one execution context
(TensorRT-RTX: with a runtime cache kept under ``$VITMSN_CACHE/tensorrt-rtx``, so kernels are
compiled once per GPU, not at every start), one CUDA stream, and for every I/O tensor a device
buffer plus a pinned host buffer sized for the profile's max batch. A failed activation frees
everything it had created; deactivation selects the runner's GPU first (TensorRT objects must be
destroyed with their device current). ``infer``: copy the batch into pinned memory, H2D,
``set_input_shape`` within the profile, ``execute_async_v3``, D2H, synchronize. Batches above the
profile's max are split; below its min, padded. One context is not re-entrant, so ``infer`` holds a
lock: a Predictor stays safe to call from many threads.

Tested in CI against a simulation of the TensorRT and CUDA runtimes (tests/trt_simulation), which is
not GPU evidence; on a GPU, ``benchmarks/gpu_check.py`` runs the real thing.

The TensorRT API is feature-detected (``hasattr``), never chosen by comparing version strings.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vitmsn.core.errors import InputError

from . import device
from .engine_check import engine_problems
from ..manifest.entries import EngineEntry
from ..manifest.fields import Where
from .base import RunnerBase, TensorMeta

if TYPE_CHECKING:  # the static check (tests/tensorrt_static_check.py) supplies each API in turn as `tensorrt`
    import tensorrt as trt

    from vitmsn.runtime.manifest import Manifest

_NP_BY_TRT_NAME = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64,
                   "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def import_cudart() -> Any:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as exc:
            raise InputError("the TensorRT backend needs cuda-python for device buffers and streams; "
                             "pip install 'vitmsn[tensorrt]'") from exc
    return cudart


def check_cuda(result: Any, what: str) -> Any:
    """cuda-python returns ``(error, *values)``; raise on an error, return the value(s)."""
    err: Any
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(getattr(err, "value", err))
    if code != 0:
        raise RuntimeError(f"CUDA error in {what}: {getattr(err, 'name', 'error')} ({code})")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def np_dtype(trt_module: ModuleType, dtype: trt.DataType) -> np.dtype:
    if TYPE_CHECKING:
        import tensorrt as api  # each API of the static check; at run time the module chosen by target
    else:
        api = trt_module
    if hasattr(api, "nptype"):
        try:
            return np.dtype(api.nptype(dtype))
        except TypeError:
            pass
    name = getattr(dtype, "name", str(dtype)).split(".")[-1].upper()
    if name not in _NP_BY_TRT_NAME:
        raise InputError(f"engine tensor dtype {name} has no numpy equivalent")
    return np.dtype(_NP_BY_TRT_NAME[name])


class _Buffer:
    """A device buffer and a pinned host buffer of the same size (NVIDIA common_runtime.py style).
    A failed second allocation frees the first: a half-built buffer never leaks."""

    def __init__(self, cudart: Any, nbytes: int, dtype: np.dtype) -> None:
        self.cudart, self.nbytes, self.dtype = cudart, nbytes, dtype
        self.device = check_cuda(cudart.cudaMalloc(nbytes), "cudaMalloc")
        try:
            self.host_ptr = check_cuda(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        except BaseException:
            cudart.cudaFree(self.device)
            raise
        raw = ctypes.cast(int(self.host_ptr), ctypes.POINTER(ctypes.c_uint8))
        self.host = np.ctypeslib.as_array(raw, (nbytes,)).view(dtype)

    def free(self) -> list[str]:
        """Free both; every free is attempted (after a lost device they report errors). Returns the errors."""
        errors = []
        for what, result in (("cudaFree", self.cudart.cudaFree(self.device)),
                             ("cudaFreeHost", self.cudart.cudaFreeHost(self.host_ptr))):
            err: Any = result[0] if isinstance(result, tuple) else result
            if int(getattr(err, "value", err) or 0) != 0:
                errors.append(f"{what}: {err}")
        return errors


def runtime_cache_path(entry: EngineEntry, gpu: device.Gpu | None) -> Path:
    """Where TensorRT-RTX's runtime cache (kernels compiled for this GPU) for ``entry`` is kept:
    ``tensorrt-rtx/<engine sha256[:16]>-sm<cc>.cache`` in vitmsn's cache directory (:mod:`vitmsn.core.cache_dir`)."""
    from vitmsn.core.cache_dir import cache_root

    base = cache_root()
    cc = gpu.compute_capability.replace(".", "") if gpu else "unknown"
    return base / "tensorrt-rtx" / f"{entry.sha256[:16]}-sm{cc}.cache"


class TensorRTRunner(RunnerBase):
    def __init__(self, path: str | os.PathLike[str], entry: EngineEntry | dict[str, Any], *, gpu_index: int = 0,
                 manifest: "Manifest | None" = None) -> None:
        super().__init__()
        self.path = Path(path)
        # a dict is a hand-written manifest entry (tests, scripts): validated like a loaded one
        self.entry = entry if isinstance(entry, EngineEntry) else EngineEntry.from_json(entry, Where(str(self.path), "engine"))
        self.manifest = manifest
        self.target = self.entry.target
        self.name = self.target
        self.precision = self.entry.precision
        self.gpu_index = gpu_index
        self.min_batch = 1
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._trt: Any = None
        self._cudart: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._runtime_cache: Any = None
        self._runtime_config: Any = None
        self._buffers: dict[str, _Buffer] = {}
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: dict[str, np.dtype] = {}
        self._profile: dict[str, tuple[tuple[int, ...], ...]] = {}

    # ---- activation ----------------------------------------------------------------------
    def _activate(self) -> None:
        try:
            trt_module = device.import_tensorrt(self.target)
            version: str | None = str(trt_module.__version__)
        except Exception:  # not installed, stubs only, or libraries that fail to load
            trt_module, version = None, None
        manifest = self.manifest
        if manifest is None and (self.path.parent / "manifest.json").is_file():
            from vitmsn.runtime.manifest import Manifest

            try:  # the directory's manifest gives the rebuild command its recorded options
                manifest = Manifest.load(self.path.parent)
            except InputError:
                manifest = None
        problems = engine_problems(self.entry, runtime_version=version, gpus=device.cuda_gpus(), root=self.path.parent,
                                   gpu_index=self.gpu_index, manifest=manifest)
        if problems or trt_module is None:
            raise InputError("; ".join(problems))
        try:
            self._activate_checked(trt_module, version)
        except BaseException:
            self._release()  # a failed activation leaves nothing allocated
            raise

    def _activate_checked(self, trt_module: Any, version: str | None) -> None:
        self._trt = trt_module
        if TYPE_CHECKING:
            import tensorrt as api  # each API of the static check; at run time the module chosen by target
        else:
            api = trt_module
        self._cudart = cudart = import_cudart()
        check_cuda(cudart.cudaSetDevice(self.gpu_index), "cudaSetDevice")
        logger = api.Logger(api.Logger.WARNING)
        self._runtime = runtime = api.Runtime(logger)
        if self.entry.version_compatible:
            # a version-compatible engine carries its own lean runtime (host code); TensorRT refuses to
            # deserialize it unless allowed (Polygraphy's EngineFromBytes does the same). The file was
            # verified against the manifest's SHA-256 before it got here.
            runtime.engine_host_code_allowed = True
        plan = self.path.read_bytes()
        rebuild = f"rebuild it on this machine: {self._rebuild()}"
        if hasattr(runtime, "get_engine_validity"):  # TensorRT-RTX: a cheap check before deserializing
            validity, diagnostics = runtime.get_engine_validity(plan)
            if getattr(validity, "name", str(validity)).upper() == "INVALID":
                raise InputError(f"{self.path}: {self.target} reports the engine invalid here (diagnostics "
                                 f"{diagnostics}); {rebuild}")
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise InputError(f"{self.path}: {self.target} {version} could not deserialize it (see the log above); {rebuild}")
        self._engine = engine
        self._describe_io(engine)
        self._context = context = self._create_context(engine)
        self._stream = check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        if engine.num_optimization_profiles > 1:
            context.set_optimization_profile_async(0, int(self._stream))
        self._allocate(engine)
        self._save_runtime_cache()

    def _rebuild(self) -> str:
        from vitmsn.runtime.backends.engine_check import rebuild_command

        return rebuild_command(self.entry, self.manifest, self.path.parent, device.gpu(self.gpu_index))

    def _create_context(self, engine: "trt.ICudaEngine") -> "trt.IExecutionContext":
        """One execution context; TensorRT-RTX's with a runtime cache, so kernels compiled once for this
        GPU are loaded by later processes instead of compiled again."""
        config = None
        if hasattr(engine, "create_runtime_config"):
            config = engine.create_runtime_config()
        if config is not None and hasattr(config, "create_runtime_cache") and hasattr(config, "set_runtime_cache"):
            cache = config.create_runtime_cache()
            path = runtime_cache_path(self.entry, device.gpu(self.gpu_index))
            if path.is_file() and not cache.deserialize(path.read_bytes()):
                self.notes.append(f"runtime cache {path} is from another release or GPU; compiling again")
            if not config.set_runtime_cache(cache):
                self.notes.append("TensorRT-RTX refused the runtime cache; kernels are compiled at every start")
            else:
                self._runtime_cache = cache
        self._runtime_config = config
        context = engine.create_execution_context(config) if config is not None else engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"{self.path}: could not create an execution context (out of device memory?)")
        return context

    def _save_runtime_cache(self) -> None:
        if self._runtime_cache is None:
            return
        from vitmsn.runtime.manifest import write_bytes_atomic

        path = runtime_cache_path(self.entry, device.gpu(self.gpu_index))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, bytes(memoryview(self._runtime_cache.serialize())))
        except OSError as exc:  # a read-only cache directory costs start-up time, never a failure
            self.notes.append(f"could not save the TensorRT-RTX runtime cache to {path}: {exc}")

    def _describe_io(self, engine: "trt.ICudaEngine") -> None:
        if TYPE_CHECKING:
            import tensorrt as trt_module  # each API of the static check
        else:
            trt_module = self._trt
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np_dtype(trt_module, engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt_module.TensorIOMode.INPUT:
                shape = tuple(engine.get_tensor_shape(name))
                self._inputs[name] = TensorMeta(name, dtype, tuple("batch" if d < 0 else d for d in shape))
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                self._profile[name] = (tuple(lo), tuple(opt), tuple(hi))
            else:
                self._outputs[name] = dtype
        first = next(iter(self._profile.values()))
        self.min_batch, self.max_batch = int(first[0][0]), int(first[2][0])

    def _allocate(self, engine: "trt.ICudaEngine") -> None:
        context: trt.IExecutionContext = self._context
        for name, meta in self._inputs.items():
            hi = self._profile[name][2]
            if not context.set_input_shape(name, hi):
                raise RuntimeError(f"{self.path}: the engine rejected its own profile's max shape {hi} for {name}")
            self._buffers[name] = _Buffer(self._cudart, int(np.prod(hi)) * meta.dtype.itemsize, meta.dtype)
        for name, dtype in self._outputs.items():
            shape = tuple(context.get_tensor_shape(name))  # at the max input shape
            if any(d < 0 for d in shape):
                raise InputError(f"{self.path}: output {name} has a data-dependent shape {shape}; not supported")
            self._buffers[name] = _Buffer(self._cudart, int(np.prod(shape)) * dtype.itemsize, dtype)
        for name, buf in self._buffers.items():
            if not context.set_tensor_address(name, int(buf.device)):
                raise RuntimeError(f"{self.path}: the engine refused the address of tensor {name}")

    def _deactivate(self) -> None:
        with self._lock:
            self._save_runtime_cache()
            self._release()

    def _release(self) -> None:
        """Free everything activation created, in reverse order, on the runner's device (the calling
        thread may have another one current). Safe on a half-activated runner and after a lost device."""
        cudart = self._cudart
        if cudart is not None:
            cudart.cudaSetDevice(self.gpu_index)
            if self._stream is not None:
                cudart.cudaStreamSynchronize(self._stream)
            for buf in self._buffers.values():
                buf.free()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._buffers.clear()
        self._inputs.clear()
        self._outputs.clear()
        self._profile.clear()
        self._context = self._engine = self._runtime = self._stream = self._runtime_cache = self._runtime_config = None

    def create_context(self) -> Any:
        """Another execution context of the active engine (same runtime configuration and cache)."""
        if self._engine is None:
            raise RuntimeError("activate the runner before creating contexts")
        config = self._runtime_config
        context = self._engine.create_execution_context(config) if config is not None else self._engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"{self.path}: could not create an execution context (out of device memory?)")
        return context

    def engine_handles(self) -> tuple[Any, Any, Any]:
        """``(trt module, cudart, ICudaEngine)`` of the active runner, for code that needs more execution
        contexts of the same engine (the bench's timing) without deserializing it again."""
        if self._engine is None:
            raise RuntimeError("activate the runner before asking for its engine")
        return self._trt, self._cudart, self._engine

    # ---- inference -----------------------------------------------------------------------
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in feed]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the engine takes {sorted(self._inputs)}")
        n = len(next(iter(feed.values())))
        assert self.max_batch is not None
        parts = []
        for start in range(0, n, self.max_batch):
            chunk = {k: np.asarray(v)[start:start + self.max_batch] for k, v in feed.items()}
            parts.append(self._infer_chunk(chunk))
        return {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in self._outputs}

    def _infer_chunk(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        context: trt.IExecutionContext = self._context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        n = len(next(iter(feed.values())))
        run_n = max(n, self.min_batch)  # pad a batch below the profile's min by repeating its last row
        with self._lock:
            check_cuda(cudart.cudaSetDevice(self.gpu_index), "cudaSetDevice")  # this thread's device
            for name, meta in self._inputs.items():
                x = np.asarray(feed[name], dtype=meta.dtype)
                if run_n > n:
                    x = np.concatenate([x, np.repeat(x[-1:], run_n - n, axis=0)])
                lo, _, hi = self._profile[name]
                if x.ndim != len(hi) or any(not (a <= d <= b) for a, d, b in zip(lo[1:], x.shape[1:], hi[1:])):
                    raise InputError(f"input {name}: shape {x.shape} is outside the engine profile {lo}..{hi}")
                buf = self._buffers[name]
                buf.host[: x.size] = x.ravel()
                check_cuda(cudart.cudaMemcpyAsync(buf.device, buf.host_ptr, x.nbytes, h2d, self._stream), "H2D copy")
                if not context.set_input_shape(name, x.shape):
                    raise InputError(f"input {name}: the engine rejected shape {x.shape}")
            if not context.execute_async_v3(int(self._stream)):
                raise RuntimeError(f"{self.path}: execute_async_v3 failed (see the TensorRT log)")
            shapes = {name: tuple(context.get_tensor_shape(name)) for name in self._outputs}
            for name, shape in shapes.items():
                buf = self._buffers[name]
                nbytes = int(np.prod(shape)) * buf.dtype.itemsize
                check_cuda(cudart.cudaMemcpyAsync(buf.host_ptr, buf.device, nbytes, d2h, self._stream), "D2H copy")
            check_cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            # copy out of the pinned buffers: they are reused by the next call
            return {name: self._buffers[name].host[: int(np.prod(s))].reshape(s)[:n].copy() for name, s in shapes.items()}
