"""Which graph and inference precision OpenVINO runs, from the manifest and this CPU.

* ``auto`` prefers OpenVINO on an x86 CPU where it is installed and no CUDA GPU is usable
  (it runs the same ONNX graphs faster than ONNX Runtime's CPU provider there).
* Precision, when none is asked for: ``bf16`` when the manifest holds a bf16 entry whose checks
  all passed (its drift against PyTorch FP32 was gated at export) and the CPU computes BF16;
  otherwise ``fp32``. ``int8`` runs only when asked for, as for ONNX Runtime on CPU.
* Files: fp32 and bf16 run ``model.fp32.onnx`` (bf16 is OpenVINO's inference precision, not a
  graph); int8 runs the TensorRT-placed Q/DQ graph ``model.int8.onnx``, which OpenVINO ran faster
  than the ONNX Runtime CPU flavour (benchmarks/README.md).
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

from vitmsn.errors import InputError

from . import device
from .manifest import Manifest, PrecisionEntry
from .openvino_runner import bf16_capable, inference_precision_for, openvino_available
from .verdicts import failed_precisions

if TYPE_CHECKING:
    from .selection import Choice

X86 = ("x86_64", "amd64", "i686", "x86")
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")  # fp16 graphs are for GPUs: auto leaves them to ONNX Runtime


def openvino_preferred() -> bool:
    """``backend="auto"`` takes OpenVINO: installed, an x86 CPU, no CUDA GPU to run engines or CUDA graphs."""
    return platform.machine().lower() in X86 and openvino_available() and not device.has_cuda_gpu()


def _gates_passed(entry: PrecisionEntry) -> bool:
    checks = entry.validation or {}
    return bool(checks) and all(bool(c.get("passed")) for c in checks.values())


def openvino_precision(manifest: Manifest, flags: frozenset[str] | None = None) -> str:
    """The precision auto runs on OpenVINO: a gated bf16 entry on a BF16 CPU, else fp32."""
    bf16 = manifest.precisions.get("bf16")
    # Only an entry whose figures are BF16's (validated with bf16 inference precision) and passed its gates.
    if bf16 is not None and bf16.extra.get("inference_precision") == "bf16" and _gates_passed(bf16) and bf16_capable(flags) \
            and "bf16" not in failed_precisions(manifest):
        return "bf16"
    if "fp32" in manifest.precisions:
        return "fp32"
    raise InputError(f"{manifest.root}: no FP32 ONNX model for OpenVINO (manifest precisions: "
                     f"{', '.join(manifest.precisions) or 'none'}); re-run vitmsn-export")


def choose_openvino(manifest: Manifest, precision: str | None, notes: tuple[str, ...],
                    flags: frozenset[str] | None = None) -> "Choice":
    from .selection import Choice

    if not openvino_available():
        raise InputError("the openvino backend is not installed: pip install 'vitmsn[openvino]'")
    if precision is None:
        precision = openvino_precision(manifest, flags)
    if precision == "fp16":
        raise InputError(f"{manifest.root}: fp16 graphs are for GPUs; on OpenVINO use --precision bf16, fp32 or int8")
    if precision not in manifest.precisions:
        raise InputError(f"{manifest.root}: precision {precision} exists only as a TensorRT engine, which OpenVINO "
                         "cannot run; use --precision fp32 or re-export with the precision wanted")
    entry = manifest.precisions[precision]
    inference = inference_precision_for(precision, flags)
    extra = list(notes)
    if precision == "bf16" and inference != "bf16":
        extra.append("this CPU has no AVX512_BF16 or AMX: bf16 runs with f32 inference precision")
    return Choice("openvino", precision, entry.file, entry.sha256, inference_precision=inference,
                  notes=tuple(extra))
