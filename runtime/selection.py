"""Which backend and precision to run, from what the artifacts hold and what this machine has.

The policy between backends (``backend="auto"``): a TensorRT engine when one in the manifest can run
here (a CUDA GPU it was built for, the release that built it); otherwise OpenVINO on an x86 CPU without
a usable GPU where it is installed (it runs the same ONNX graphs faster than ONNX Runtime's CPU
provider); otherwise ONNX Runtime. Which graph and precision each backend then runs (CPU flavours,
auto's precision order, BF16 inference, which engines fit) is the registry's: :mod:`.backends.registry`.
A forced ``backend`` or ``precision`` is honoured or refused with a message that says why and what to
do; it is never silently replaced.

Verdicts (``manifest.json["verdicts"]``, :mod:`.manifest.verdicts`): automatic precision choice never picks a
precision whose latest verdict is failed; an explicit one still runs, with a note naming the failure.
An inconclusive precision stays eligible (nothing showed harm), with a note saying it is unproven.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vitmsn.core.errors import InputError

from .backends import device
from .backends.base import Choice
from .backends.engine_check import rebuild_command
from .backends.registry import (BACKENDS as REGISTRY, OPENVINO_PRECISIONS, Machine, engine_choices,
                                onnxruntime_precision_order, openvino_preferred)
from .manifest import EngineEntry, Manifest
from .manifest.verdicts import failed_precisions, verdict_note

__all__ = ["BACKENDS", "Choice", "choose", "describe_choice", "engine_choices", "fallback_choice", "fallback_note",
           "onnxruntime_precision_order"]

BACKENDS = ("auto", *REGISTRY)


def choose(manifest: Manifest, backend: str = "auto", precision: str | None = None) -> Choice:
    """The backend and precision to run (the rule in the module docstring), with the verdict's line."""
    choice = _choose(manifest, backend, precision)
    failed = failed_precisions(manifest).get(choice.precision)
    if precision in (None, "", "auto") and failed is not None:  # e.g. OpenVINO's fp32 when fp32 itself failed
        raise InputError(f"{manifest.root}: automatic selection found only {choice.precision} to run here, and it "
                         f"failed its latest verdict ({failed.name}: {failed.reason()}); pass --precision "
                         f"{choice.precision} to run it anyway, or re-export")
    return replace(choice, verdict=verdict_note(manifest, choice.precision))


def _choose(manifest: Manifest, backend: str, precision: str | None) -> Choice:
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if precision in (None, "", "auto"):
        precision = None
    elif precision not in manifest.precisions and not any(e.precision == precision for e in manifest.engines):
        have = sorted(set(manifest.precisions) | {e.precision for e in manifest.engines})
        raise InputError(f"{manifest.root}: precision {precision!r} was not exported (it has: {', '.join(have)}); "
                         f"re-run vitmsn-export with --precision {precision}")
    machine = Machine.here()
    notes: list[str] = []
    if backend == "tensorrt":
        return REGISTRY["tensorrt"].candidate(manifest, machine, precision, notes)
    if backend == "auto":
        runnable, why_not = engine_choices(manifest, precision)
        if runnable:
            return REGISTRY["tensorrt"].candidate(manifest, machine, precision, notes)
        if why_not:
            notes.append(fallback_note(manifest, precision))
    if backend == "openvino" or (backend == "auto" and openvino_preferred(machine)
                                 and (precision is None or precision in OPENVINO_PRECISIONS and precision in manifest.precisions)):
        return REGISTRY["openvino"].candidate(manifest, machine, precision, notes)
    if precision == "bf16":
        raise InputError(f"{manifest.root}: bf16 runs on OpenVINO only; pip install 'vitmsn[openvino]' and use "
                         "--backend openvino (or auto)")
    return REGISTRY["onnxruntime"].candidate(manifest, machine, precision, notes)


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
