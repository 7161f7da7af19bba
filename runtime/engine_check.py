"""Can this machine run a TensorRT engine from the manifest? Checked before deserializing it.

An engine is tied to the TensorRT release that built it and to the GPU architectures it was built
for (TensorRT: same release unless built version-compatible; TensorRT-RTX: same release, always).
Both are recorded in the manifest's ``engines`` entries, so the check needs no deserialization and
its message says exactly how to rebuild.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .device import Gpu
from .manifest_entries import EngineEntry


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; numeric, so "10.x" never compares as a string."""
    return tuple(int(p) for p in re.findall(r"\d+", str(version)))


def normalize_cc(value: Any) -> str | None:
    """``"8.6"``, ``"86"``, ``"sm_86"``, ``"SM86"`` or ``8.6`` -> ``"8.6"`` (None if unreadable)."""
    text = str(value).strip().lower().replace("sm_", "").replace("sm", "").replace("compute_", "")
    if re.fullmatch(r"\d+\.\d+", text):
        major, minor = text.split(".")
        return f"{int(major)}.{int(minor)}"
    if re.fullmatch(r"\d{2,3}", text):
        return f"{int(text[:-1])}.{int(text[-1])}"
    return None


def versions_compatible(built: str, running: str, target: str, version_compatible: bool = False) -> bool:
    b, r = version_tuple(built)[:3], version_tuple(running)[:3]
    if not b or not r:
        return False
    if b == r:
        return True
    if target == "tensorrt" and version_compatible:
        # a version-compatible engine runs on the same or a later release of its major version,
        # and TensorRT 10 version-compatible engines also on TensorRT 11
        return r >= b and (r[0] == b[0] or (b[0], r[0]) == (10, 11))
    return False


def rebuild_hint(entry: EngineEntry, root: Any = "ARTIFACTS", model: str | None = None) -> str:
    precision, target = entry.precision, entry.target
    return (f"rebuild it on this machine: vitmsn-export --model {model or '<the model>'} --precision {precision} "
            f"--engine require --target {target} --out {root}; or run it with --backend onnxruntime")


def engine_problems(entry: EngineEntry, *, runtime_version: str | None, gpus: Iterable[Gpu],
                    root: Any = "ARTIFACTS", model: str | None = None) -> list[str]:
    """Why the engine ``entry`` cannot run here (empty when it can).

    ``runtime_version`` is the installed module's ``__version__`` (None: not importable) and
    ``gpus`` what :func:`vitmsn.runtime.device.cuda_gpus` reports.
    """
    name, target, built = entry.file, entry.target, entry.tensorrt_version
    problems = []
    gpus = list(gpus)
    if not gpus:
        problems.append(f"{name}: needs an NVIDIA GPU with a CUDA driver, and none was found")
    if not gpus and runtime_version is None:
        pass  # without a GPU the release was not looked up (importing TensorRT just to refuse is slow)
    elif runtime_version is None:
        module = "tensorrt_rtx" if target == "tensorrt-rtx" else "tensorrt"
        problems.append(f"{name}: built for {target} {built}, but the {module!r} module is not importable here")
    elif not versions_compatible(built, runtime_version, target, entry.version_compatible):
        problems.append(f"{name}: built with {target} {built}, but this machine has {target} {runtime_version} "
                        "(engines only run on the release that built them)")
    wanted = [c for c in (normalize_cc(v) for v in entry.compute_capabilities) if c]
    if gpus and wanted and not entry.hardware_compatible:
        gpu = gpus[0]
        if gpu.compute_capability not in wanted:
            problems.append(f"{name}: built for compute capability {', '.join(wanted)}, but GPU {gpu.index} "
                            f"({gpu.name}) is {gpu.compute_capability}")
    if problems:
        problems[-1] += "; " + rebuild_hint(entry, root, model)
    return problems
