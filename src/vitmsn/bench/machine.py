"""What the numbers were measured on: CPU, GPU, library versions, thread settings, GEMM ceiling.

The GEMM ceiling is measured in the same run, on the same thread count as the benchmark rows,
so ``roofline_fraction = GFLOP per image x throughput / ceiling`` compares like with like. It is
the best of several timed ``torch.matmul`` calls on square FP32 matrices (2048 by default), i.e.
what this machine's BLAS reaches on a large, well-shaped GEMM: an upper bound for a model whose
FLOPs are almost all GEMMs, never reachable in full (layer norms, softmax, GELU and the small
per-head attention GEMMs run below it).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

from .timing import time_calls

# /proc/cpuinfo flags worth naming in a report (SIMD width and int8 dot-product support).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
PACKAGES = ("vitmsn", "torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-rtx",
            "tensorrt_rtx_cu13", "cuda-python", "nvidia-modelopt", "pillow", "transformers")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; falls back to os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
                            "available_cpus": available_cpus(), "architecture": platform.machine()}
    try:
        text = open(cpuinfo_path, encoding="utf-8", errors="replace").read()
    except OSError:
        return info
    fields: dict[str, str] = {}
    cores = set()
    physical_id = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
        fields.setdefault(key, value)
    if "model name" in fields:
        info["model"] = fields["model name"]
    flags = set(fields.get("flags", "").split())
    info["flags"] = [f for f in CPU_FLAGS if f in flags]
    info["physical_cores"] = len(cores) or None
    if "cpu MHz" in fields:
        info["mhz"] = float(fields["cpu MHz"])
    return info


def gpu_info() -> list[dict[str, str]]:
    from vitmsn.runtime.backends import device

    return [{"index": str(g.index), "name": g.name, "compute_capability": g.compute_capability}
            for g in device.cuda_gpus()]


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def thread_settings(threads: int) -> dict[str, Any]:
    import torch

    return {
        "bench_threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "onnxruntime_intra_op_threads": threads,
        "onnxruntime_inter_op_threads": 1,
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def gemm_ceiling_cpu(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """Best-of-``repeats`` FP32 ``torch.matmul`` of two n x n matrices on ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        probe = GemmProbe(n)
        probe()  # warm-up
        times = sorted(time_calls(probe, repeats))
    finally:
        torch.set_num_threads(previous)
    return {"device": "cpu", "dtype": "float32", "library": "torch.matmul", "n": n, "threads": threads,
            "gflops_per_s": round(probe.gflops_per_s(times[0]), 2),
            "gflops_per_s_median": round(probe.gflops_per_s(times[len(times) // 2]), 2)}


class SquareGemm:
    """A call that runs one n x n by n x n GEMM, its GFLOP/s from the milliseconds it took."""

    n: int

    def gflops_per_s(self, milliseconds: float) -> float:
        return 2.0 * self.n**3 / (milliseconds / 1000.0) / 1e9


class GemmProbe(SquareGemm):
    """An n x n FP32 ``torch.matmul`` timed as one more row among the benchmark rows.

    Interleaved with them, it meets the same load as they do, so the fraction of the ceiling a
    row reaches is not skewed by a burst of load that hit only the ceiling's measurement.
    """

    def __init__(self, n: int = 2048) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.n = n
        self.a, self.b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        self.out = torch.empty(n, n)

    def __call__(self) -> None:
        import torch

        torch.matmul(self.a, self.b, out=self.out)


def gemm_ceiling_cuda(dtype_name: str = "float32", n: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """Best-of-``repeats`` ``torch.matmul`` on the current CUDA device, timed with CUDA events.

    TF32 stays at PyTorch's default (off for matmul), so the FP32 ceiling is true FP32.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return {"device": "cuda", "dtype": dtype_name, "library": "torch.matmul", "n": n,
            "gflops_per_s": round(2.0 * n**3 / min(times) / 1e9, 1)}


def describe_machine(threads: int) -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "versions": library_versions(),
        "threads": thread_settings(threads),
        "load_average_start": load_average(),
    }


def machine_class(machine: dict[str, Any]) -> str:
    """A short name such as ``cpu-2core-avx2`` for the tables in benchmarks/."""
    cpu = machine.get("cpu", {})
    flags = cpu.get("flags", [])
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else cpu.get("architecture", "cpu")
    return f"cpu-{machine.get('threads', {}).get('bench_threads', cpu.get('available_cpus'))}core-{isa}"
