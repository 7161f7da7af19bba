"""The backends, registered once: whether each is installed, which graph it runs for a precision on this
machine, and how it loads that choice into a :class:`~.base.Runner`.

Selection (what ``auto`` picks, what a forced backend may run), the bench (which of its rows run what
the runtime loads) and the Triton writer (which graph a CPU instance serves) ask here; no other module
knows a file rule. The rules:

* ONNX Runtime: on the CPU provider, the precision's CPU flavour where the export wrote one
  (``onnxruntime_cpu``: INT8 quantized for its CPU kernels; ``onnxruntime_optimized``: FP32 with its
  fusions), except 8-bit weights made for VNNI on a CPU without it; on a GPU provider the exported graph.
  Auto's precision: int8, fp16, fp32 with the TensorRT provider; fp16, fp32, int8 with CUDA; fp32 on CPU.
* OpenVINO (x86 CPUs): fp32 and bf16 run ``model.fp32.onnx`` (bf16 is its inference precision, not a
  graph), int8 the Q/DQ graph. Auto's precision: a bf16 entry whose gates passed on a BF16 CPU, else fp32.
* TensorRT: the manifest's engines that can run on this GPU with the installed release, int8 first.

Adding a backend: a runner module in this package (subclass :class:`~.base.RunnerBase`), then one
:class:`Backend` in :data:`BACKENDS` with ``available``, ``candidate`` and ``load``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vitmsn.core.errors import InputError

from ..manifest import FLAVOURS, EngineEntry, FileRef, PrecisionEntry
from ..manifest.verdicts import failed_precisions
from . import device
from .base import Choice, Runner
from .cpu import bf16_capable, cpu_flags, vnni_capable
from .engine_check import engine_problems
from .openvino import inference_precision_for, openvino_available

if TYPE_CHECKING:
    from ..manifest import Manifest

X86 = ("x86_64", "amd64", "i686", "x86")
ENGINE_ORDER = ("int8", "fp16", "fp32")
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")  # fp16 graphs are for GPUs: auto leaves them to ONNX Runtime
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class Machine:
    """What the choice of graph depends on: the CPU's flags and whether a CUDA GPU is usable."""

    cpu_flags: frozenset[str]
    cuda_gpu: bool
    x86: bool

    @classmethod
    def here(cls) -> "Machine":
        return cls(cpu_flags(), device.has_cuda_gpu(), platform.machine().lower() in X86)


@dataclass(frozen=True)
class LoadOptions:
    """What the caller may set on the runner it gets (``Predictor.from_artifacts`` passes them through)."""

    threads: int | None = None  # ONNX Runtime intra-op / OpenVINO inference threads
    providers: Any = "auto"  # ONNX Runtime
    graph_optimization: str = "all"  # ONNX Runtime


# ---- ONNX Runtime --------------------------------------------------------------------------------
def cpu_flavour(entry: PrecisionEntry, flags: frozenset[str] | None = None) -> str | None:
    """The key of the flavour ONNX Runtime's CPU provider loads instead of ``entry``'s own graph, or None.
    Full-range (8-bit) weights saturate the int16 u8 x s8 path of a CPU without VNNI: not loaded there."""
    key = next((k for k in FLAVOURS if k in entry.flavours), None)
    if key is not None and entry.flavours[key].extra.get("needs_vnni") and not vnni_capable(flags):
        return None
    return key


def onnxruntime_precision_order(providers: tuple[str, ...]) -> tuple[str, ...]:
    """Auto's precisions on ONNX Runtime, fastest first. CUDA alone runs Q/DQ int8 slowly; on the CPU provider
    fp16 graphs run about 3x slower and int8 changes results, so int8 there only when asked for."""
    if "TensorrtExecutionProvider" in providers:
        return ("int8", "fp16", "fp32")
    if "CUDAExecutionProvider" in providers:
        return ("fp16", "fp32", "int8")
    return ("fp32",)


def onnxruntime_providers() -> tuple[str, ...]:
    try:
        import onnxruntime as ort
    except ImportError:
        return ()
    from .onnxruntime import auto_providers

    return tuple(auto_providers(ort.get_available_providers()))


def onnxruntime_candidate(manifest: "Manifest", machine: Machine, precision: str | None, notes: list[str]) -> Choice:
    providers = onnxruntime_providers()
    if not providers:
        extra = device.onnxruntime_extra()
        raise InputError(f"no inference backend is installed: pip install 'vitmsn[{extra}]'"
                         + (" (or 'vitmsn[tensorrt]')" if extra == "onnxruntime" else ""))
    if precision is None:  # auto never picks a precision whose latest verdict failed
        failed = failed_precisions(manifest)
        order = onnxruntime_precision_order(providers)
        precision = next((p for p in order if p in manifest.precisions and p not in failed), None)
        if precision is None and failed:
            raise InputError(f"{manifest.root}: every precision ONNX Runtime would run here failed its latest verdict "
                             f"({'; '.join(failed[p].name for p in order if p in failed)}); pass --precision to run one "
                             "anyway, or re-export")
        if precision is None:
            raise InputError(f"{manifest.root}: no ONNX model to run with ONNX Runtime (manifest precisions: "
                             f"{', '.join(manifest.precisions) or 'none'}); re-run vitmsn-export")
    elif precision not in manifest.precisions:
        raise InputError(f"{manifest.root}: precision {precision} exists only as a TensorRT engine, which cannot "
                         f"run here ({'; '.join(notes) or 'backend onnxruntime was asked for'})")
    entry: FileRef = manifest.precisions[precision]
    key = cpu_flavour(manifest.precisions[precision], machine.cpu_flags)
    if key is None and manifest.precisions[precision].cpu_flavour is not None:
        notes.append(f"{manifest.precisions[precision].cpu_flavour.file} has 8-bit weights made for a CPU with VNNI, "  # type: ignore[union-attr]
                     f"which this one lacks; using {entry.file} (re-export on this CPU for a faster CPU flavour)")
    elif key is not None and not set(providers) & set(GPU_PROVIDERS):
        entry = manifest.precisions[precision].flavours[key]
        notes.append(f"{precision} on CPU: using {entry.file}, the ONNX Runtime CPU flavour")
    return Choice("onnxruntime", precision, entry.file, entry.sha256, providers=providers, notes=tuple(notes))


def onnxruntime_load(manifest: "Manifest", choice: Choice, path: Path, options: LoadOptions) -> Runner:
    from .onnxruntime import TENSORRT, OnnxRuntimeRunner, tensorrt_provider_options

    chw = tuple(int(d) for d in manifest.input_shape[1:])
    from vitmsn.core.cache_dir import cache_root

    cache = cache_root() / "ort-tensorrt" / choice.sha256[:16]
    provider_options = {TENSORRT: tensorrt_provider_options(manifest.input_name, chw, manifest.batch.to_json(), cache)}
    return OnnxRuntimeRunner(path, precision=choice.precision, providers=options.providers,
                             intra_op_threads=options.threads, graph_optimization=options.graph_optimization,
                             provider_options=provider_options)


# ---- OpenVINO ------------------------------------------------------------------------------------
def openvino_preferred(machine: Machine) -> bool:
    """``backend="auto"`` takes OpenVINO: installed, an x86 CPU, no CUDA GPU to run engines or CUDA graphs."""
    return machine.x86 and openvino_available() and not machine.cuda_gpu


def gates_passed(entry: PrecisionEntry) -> bool:
    checks = entry.validation or {}
    return bool(checks) and all(bool(c.get("passed")) for c in checks.values())


def openvino_precision(manifest: "Manifest", flags: frozenset[str] | None = None) -> str:
    """The precision auto runs on OpenVINO: a gated bf16 entry on a BF16 CPU, else fp32."""
    bf16 = manifest.precisions.get("bf16")
    # Only an entry whose figures are BF16's (validated with bf16 inference precision) and passed its gates.
    if bf16 is not None and bf16.extra.get("inference_precision") == "bf16" and gates_passed(bf16) and bf16_capable(flags) \
            and "bf16" not in failed_precisions(manifest):
        return "bf16"
    if "fp32" in manifest.precisions:
        return "fp32"
    raise InputError(f"{manifest.root}: no FP32 ONNX model for OpenVINO (manifest precisions: "
                     f"{', '.join(manifest.precisions) or 'none'}); re-run vitmsn-export")


def openvino_candidate(manifest: "Manifest", machine: Machine, precision: str | None, notes: list[str]) -> Choice:
    if not openvino_available():
        raise InputError("the openvino backend is not installed: pip install 'vitmsn[openvino]'")
    if precision is None:
        precision = openvino_precision(manifest, machine.cpu_flags)
    if precision == "fp16":
        raise InputError(f"{manifest.root}: fp16 graphs are for GPUs; on OpenVINO use --precision bf16, fp32 or int8")
    if precision not in manifest.precisions:
        raise InputError(f"{manifest.root}: precision {precision} exists only as a TensorRT engine, which OpenVINO "
                         "cannot run; use --precision fp32 or re-export with the precision wanted")
    entry = manifest.precisions[precision]
    inference = inference_precision_for(precision, machine.cpu_flags)
    if precision == "bf16" and inference != "bf16":
        notes.append("this CPU has no AVX512_BF16 or AMX: bf16 runs with f32 inference precision")
    return Choice("openvino", precision, entry.file, entry.sha256, inference_precision=inference, notes=tuple(notes))


def openvino_load(manifest: "Manifest", choice: Choice, path: Path, options: LoadOptions) -> Runner:
    from .openvino import OpenVINORunner

    return OpenVINORunner(path, precision=choice.precision, inference_precision=choice.inference_precision or "auto",
                          threads=options.threads)


# ---- TensorRT ------------------------------------------------------------------------------------
def _tensorrt_version(target: str) -> str | None:
    module = device.TENSORRT_MODULES.get(target)
    if module is None or not device.module_available(module):
        return None
    try:
        return str(device.import_tensorrt(target).__version__)
    except Exception:  # not installed, stubs only, or libraries that fail to load
        return None


def engine_choices(manifest: "Manifest", precision: str | None, *,
                   with_rebuild: bool = True) -> tuple[list[EngineEntry], list[str]]:
    """Runnable engine entries (fastest first) and, for the others, why not. With no precision asked for, an
    engine whose precision failed its latest verdict is left out (auto never picks it)."""
    gpus = device.cuda_gpus()
    failed = failed_precisions(manifest) if not precision else {}
    runnable, why_not = [], []
    for entry in manifest.engines:
        if (precision and entry.precision != precision) or entry.precision in failed:
            continue
        version = _tensorrt_version(entry.target) if gpus else None
        problems = engine_problems(entry, runtime_version=version, gpus=gpus, root=manifest.root,
                                   manifest=manifest, with_rebuild=with_rebuild)
        (why_not.extend(problems) if problems else runnable.append(entry))
    order = {p: i for i, p in enumerate(ENGINE_ORDER)}
    runnable.sort(key=lambda e: order.get(e.precision, len(order)))
    return runnable, why_not


def tensorrt_candidate(manifest: "Manifest", machine: Machine, precision: str | None, notes: list[str]) -> Choice:
    runnable, why_not = engine_choices(manifest, precision)
    if runnable:
        e = runnable[0]
        return Choice("tensorrt", e.precision, e.file, e.sha256, engine=e)
    if not manifest.engines or (precision and not why_not):
        what = f"{precision} engine" if precision else "TensorRT engine"
        raise InputError(f"{manifest.root}: the manifest has no {what}; build one with vitmsn-export "
                         f"--precision {precision or 'fp16'} --engine require, or use --backend onnxruntime")
    raise InputError("no TensorRT engine can run here: " + "; ".join(why_not))


def tensorrt_load(manifest: "Manifest", choice: Choice, path: Path, options: LoadOptions) -> Runner:
    from .tensorrt import TensorRTRunner

    assert choice.engine is not None
    return TensorRTRunner(path, choice.engine, manifest=manifest)


# ---- the registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    name: str
    available: Callable[[], bool]
    # the Choice for a precision (None: this backend's auto order) here; InputError saying why not
    candidate: Callable[["Manifest", Machine, str | None, list[str]], Choice]
    load: Callable[["Manifest", Choice, Path, LoadOptions], Runner]  # an inactive runner


BACKENDS = {b.name: b for b in (
    Backend("tensorrt", lambda: any(device.module_available(m) for m in device.TENSORRT_MODULES.values()),
            tensorrt_candidate, tensorrt_load),
    Backend("onnxruntime", lambda: device.module_available("onnxruntime"), onnxruntime_candidate, onnxruntime_load),
    Backend("openvino", openvino_available, openvino_candidate, openvino_load),
)}
