"""What this machine can run: CUDA GPUs and their compute capability, TensorRT modules.

Everything is feature-detected without importing a heavy package: the CUDA driver is asked
through ``ctypes`` (``libcuda``; no cuda-python needed just to look), and TensorRT modules are
looked up with ``importlib.util.find_spec`` before anything imports them. Results are cached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

# CUdevice_attribute values from cuda.h
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76

# manifest engine target -> the Python module that runs it
TENSORRT_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str  # "8.6"


def _libcuda() -> ctypes.CDLL | None:
    names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda") or "", "nvcuda.dll"]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_gpus() -> tuple[Gpu, ...]:
    """The CUDA GPUs the driver reports, as CUDA numbers them (empty without a driver or GPU).

    This is the one GPU-detection path of vitmsn (runtime, selection, engine builder, bench). It
    asks the driver, so it sees what a CUDA program would see: ``CUDA_VISIBLE_DEVICES`` (which the
    driver applies) and a container's device list, not merely whether ``/dev/nvidiactl`` exists.
    Cached per value of ``CUDA_VISIBLE_DEVICES``.
    """
    return _cuda_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))


@functools.lru_cache(maxsize=8)
def _cuda_gpus(visible: str | None) -> tuple[Gpu, ...]:
    if visible is not None and visible.strip() in ("", "-1"):
        return ()
    lib = _libcuda()
    if lib is None or lib.cuInit(0) != 0:
        return ()
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return ()
    gpus = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        lib.cuDeviceGetName(name, 256, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        gpus.append(Gpu(i, name.value.decode(errors="replace"), f"{major.value}.{minor.value}"))
    return tuple(gpus)


cuda_gpus.cache_clear = _cuda_gpus.cache_clear  # type: ignore[attr-defined]


def has_cuda_gpu() -> bool:
    return bool(cuda_gpus())


def onnxruntime_extra() -> str:
    """The extra that installs ONNX Runtime for this machine: ``cpu`` (plain onnxruntime, 78 MB) without an
    NVIDIA GPU, ``onnxruntime`` (onnxruntime-gpu, 404 MB) with one."""
    return "onnxruntime" if has_cuda_gpu() else "cpu"


def gpu(index: int) -> Gpu | None:
    """The CUDA device ``index`` (as ``cudaSetDevice`` numbers it), or None when there is none."""
    gpus = cuda_gpus()
    return gpus[index] if 0 <= index < len(gpus) else None


def module_available(name: str) -> bool:
    """Whether ``name`` (dotted names too: their parents are imported to look) can be imported here."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_tensorrt(target: str) -> ModuleType:
    """``tensorrt`` or ``tensorrt_rtx`` for a manifest engine target. Raises ImportError naming
    the package to install."""
    module = TENSORRT_MODULES.get(target)
    if module is None:
        raise ImportError(f"unknown engine target {target!r}; expected one of {sorted(TENSORRT_MODULES)}")
    package = "tensorrt" if target == "tensorrt" else "tensorrt-rtx-cu13"
    try:
        trt = importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"engine target {target} needs the {module!r} module ({exc}); "
                          f"pip install {package} (with its runtime libraries) on a machine with a GPU") from exc
    return trt


def tensorrt_importable(target: str) -> bool:
    try:
        import_tensorrt(target)
        return True
    except Exception:  # a broken install can raise OSError/RuntimeError while loading its libraries
        return False
