"""Which backend and precision to run, from what the artifacts hold and what this machine has.

The rule (``backend="auto"``, ``precision=None``):

1. A TensorRT engine, when one in the manifest can run here: a CUDA GPU whose compute capability
   the engine was built for, and the exact ``tensorrt``/``tensorrt_rtx`` release that built it.
   Among runnable engines the fastest precision wins: int8, then fp16, then fp32.
2. Otherwise ONNX Runtime. On a GPU (CUDA or TensorRT execution provider usable) the fastest
   exported graph: int8 then fp16 then fp32 with the TensorRT provider, fp16 then fp32 then int8
   with CUDA alone (its Q/DQ int8 path is slow). On CPU: fp32, because fp16 graphs run about 3x
   slower on the CPU provider and int8 changes results; ask for ``precision="int8"`` explicitly
   for the faster CPU int8 graph.
3. OpenVINO (``backend="openvino"``, or auto on an x86 CPU without a usable GPU where it is
   installed): it runs the artifacts' ONNX graphs faster than ONNX Runtime on CPU. Its precision:
   ``bf16`` when the manifest has a bf16 entry whose drift gate passed and the CPU computes BF16
   (AVX512_BF16 or AMX), else ``fp32``; ``int8`` only when asked for. The inference precision it
   runs (f32 or bf16) is recorded in the choice (:mod:`.openvino_choice`).

A forced ``backend`` or ``precision`` is honoured or refused with a message that says why and
what to do; it is never silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from vitmsn.errors import InputError

from . import device
from .cpu import vnni_capable
from .engine_check import engine_problems, rebuild_command
from .manifest import EngineEntry, FileRef, Manifest
from .openvino_choice import OPENVINO_PRECISIONS, choose_openvino, openvino_preferred

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")
ENGINE_ORDER = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Choice:
    backend: str  # "onnxruntime" or "tensorrt"
    precision: str
    file: str  # relative to the artifacts directory
    sha256: str
    engine: EngineEntry | None = None
    providers: tuple[str, ...] = ()
    inference_precision: str | None = None  # OpenVINO only: "f32" or "bf16", what the CPU runs
    notes: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> FileRef:
        """The file to load, as the manifest names it (verify it with :meth:`Manifest.verify`)."""
        return FileRef(self.file, self.sha256)


def _tensorrt_version(target: str) -> str | None:
    module = device.TENSORRT_MODULES.get(target)
    if module is None or not device.module_available(module):
        return None
    try:
        return str(device.import_tensorrt(target).__version__)
    except Exception:  # not installed, stubs only, or libraries that fail to load
        return None


def engine_choices(manifest: Manifest, precision: str | None, *,
                   with_rebuild: bool = True) -> tuple[list[EngineEntry], list[str]]:
    """Runnable engine entries (fastest first) and, for the others, why not."""
    gpus = device.cuda_gpus()
    runnable, why_not = [], []
    for entry in manifest.engines:
        if precision and entry.precision != precision:
            continue
        version = _tensorrt_version(entry.target) if gpus else None
        problems = engine_problems(entry, runtime_version=version, gpus=gpus, root=manifest.root,
                                   manifest=manifest, with_rebuild=with_rebuild)
        (why_not.extend(problems) if problems else runnable.append(entry))
    order = {p: i for i, p in enumerate(ENGINE_ORDER)}
    runnable.sort(key=lambda e: order.get(e.precision, len(order)))
    return runnable, why_not


def onnxruntime_precision_order(providers: tuple[str, ...]) -> tuple[str, ...]:
    if "TensorrtExecutionProvider" in providers:
        return ("int8", "fp16", "fp32")
    if "CUDAExecutionProvider" in providers:
        return ("fp16", "fp32", "int8")
    return ("fp32",)


def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime as ort
    except ImportError:
        return ()
    from .onnxruntime_runner import auto_providers

    return tuple(auto_providers(ort.get_available_providers()))


def choose(manifest: Manifest, backend: str = "auto", precision: str | None = None) -> Choice:
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if precision in (None, "", "auto"):
        precision = None
    elif precision not in manifest.precisions and not any(e.precision == precision for e in manifest.engines):
        have = sorted(set(manifest.precisions) | {e.precision for e in manifest.engines})
        raise InputError(f"{manifest.root}: precision {precision!r} was not exported (it has: {', '.join(have)}); "
                         f"re-run vitmsn-export with --precision {precision}")
    notes: list[str] = []
    if backend in ("auto", "tensorrt"):
        runnable, why_not = engine_choices(manifest, precision)
        if runnable:
            e = runnable[0]
            return Choice("tensorrt", e.precision, e.file, e.sha256, engine=e)
        if backend == "tensorrt":
            if not manifest.engines or (precision and not why_not):
                what = f"{precision} engine" if precision else "TensorRT engine"
                raise InputError(f"{manifest.root}: the manifest has no {what}; build one with vitmsn-export "
                                 f"--precision {precision or 'fp16'} --engine require, or use --backend onnxruntime")
            raise InputError("no TensorRT engine can run here: " + "; ".join(why_not))
        if why_not:
            notes.append(fallback_note(manifest, precision))
    if backend == "openvino" or (backend == "auto" and openvino_preferred()
                                 and (precision is None or precision in OPENVINO_PRECISIONS and precision in manifest.precisions)):
        return choose_openvino(manifest, precision, tuple(notes))
    if precision == "bf16":
        raise InputError(f"{manifest.root}: bf16 runs on OpenVINO only; pip install 'vitmsn[openvino]' and use "
                         "--backend openvino (or auto)")
    providers = _ort_providers()
    if not providers:
        raise InputError(f"no inference backend is installed: pip install 'vitmsn[{device.onnxruntime_extra()}]'"
                         + (" (or 'vitmsn[tensorrt]')" if device.onnxruntime_extra() == "onnxruntime" else ""))
    if precision is None:
        order = onnxruntime_precision_order(providers)
        precision = next((p for p in order if p in manifest.precisions), None)
        if precision is None:
            raise InputError(f"{manifest.root}: no ONNX model to run with ONNX Runtime (manifest precisions: "
                             f"{', '.join(manifest.precisions) or 'none'}); re-run vitmsn-export")
    elif precision not in manifest.precisions:
        raise InputError(f"{manifest.root}: precision {precision} exists only as a TensorRT engine, which cannot "
                         f"run here ({'; '.join(notes) or 'backend onnxruntime was asked for'})")
    entry: FileRef = manifest.precisions[precision]
    cpu_flavour = manifest.precisions[precision].cpu_flavour
    if cpu_flavour is not None and cpu_flavour.extra.get("needs_vnni") and not vnni_capable():
        # full-range INT8 weights saturate ONNX Runtime's int16 u8 x s8 path on CPUs without VNNI
        notes.append(f"{cpu_flavour.file} has 8-bit weights made for a CPU with VNNI, which this one lacks; "
                     f"using {entry.file} (re-export on this CPU for a faster CPU flavour)")
        cpu_flavour = None
    if cpu_flavour and not set(providers) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        # On the CPU provider: INT8 quantized for ONNX Runtime's CPU kernels (uint8 activations), not
        # the TensorRT-placed Q/DQ graph, which runs slower there; FP32 with ONNX Runtime's fusions.
        notes.append(f"{precision} on CPU: using {cpu_flavour.file}, the ONNX Runtime CPU flavour")
        entry = cpu_flavour
    return Choice("onnxruntime", precision, entry.file, entry.sha256, providers=providers, notes=tuple(notes))


def fallback_note(manifest: Manifest, precision: str | None, failure: str | None = None,
                  entry: EngineEntry | None = None) -> str:
    """The ONE note printed when ``auto`` runs ONNX Runtime instead of the manifest's engines: why,
    and (where a rebuild can help: a GPU is here) the command that rebuilds them with the recorded options."""
    entries = [e for e in manifest.engines if not precision or e.precision == precision]
    files = ", ".join(e.file for e in entries)
    gpus = device.cuda_gpus()
    if failure is not None:
        why = failure
    else:
        _, problems = engine_choices(manifest, precision, with_rebuild=False)
        why = "; ".join(problems)
    head = f"TensorRT engine{'s' if len(entries) > 1 else ''} {files} not used, running ONNX Runtime instead: "
    if not gpus:
        return head + "no NVIDIA GPU with a CUDA driver was found here (driver query; CUDA_VISIBLE_DEVICES applies)"
    target = entry or (entries[0] if entries else None)
    if "vitmsn-export" in why or target is None:  # the runner's message already ends with the rebuild command
        return head + why
    return head + f"{why}; rebuild for this GPU: {rebuild_command(target, manifest, manifest.root, gpus[0])}"


def fallback_choice(manifest: Manifest, failed: Choice, backend: str, precision: str | None,
                    error: BaseException) -> Choice:
    """``backend="auto"`` picked an engine that then could not start (deserialization refused, device
    memory exhausted, ...): the ONNX Runtime choice, carrying one note that says why. Any other case
    re-raises ``error``."""
    if backend != "auto" or failed.backend != "tensorrt":
        raise error
    note = fallback_note(manifest, precision, failure=str(error), entry=failed.engine)
    ort = choose(manifest, "onnxruntime", precision)
    return Choice(ort.backend, ort.precision, ort.file, ort.sha256, providers=ort.providers, notes=(note, *ort.notes))


def describe_choice(choice: Choice) -> str:
    where = f" ({', '.join(choice.providers)})" if choice.providers else ""
    if choice.inference_precision:
        where = f" (CPU, inference precision {choice.inference_precision})"
    return f"{choice.backend}{where} {choice.precision} {Path(choice.file).name}"
