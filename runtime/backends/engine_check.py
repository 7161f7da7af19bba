"""Can this machine run a TensorRT engine from the manifest? Checked before deserializing it.

An engine is tied to the TensorRT release that built it and to the GPU architectures it was built
for (TensorRT: same release unless built version-compatible; TensorRT-RTX: same release, always).
Both are recorded in the manifest's ``engines`` entries, so the check needs no deserialization and
its message says exactly how to rebuild.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any, Iterable

from .device import Gpu
from ..manifest.entries import EngineEntry

if TYPE_CHECKING:
    from ..manifest import Manifest


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


def rebuild_command(entry: EngineEntry, manifest: "Manifest | None", root: Any = "ARTIFACTS",
                    gpu: Gpu | None = None) -> str:
    """The ``vitmsn-export`` command that rebuilds ``entry``'s engine with the options the manifest
    recorded. An export replaces its --out directory whole, so the command asks again for EVERY
    precision the directory holds (int8 with its recorded calibration images), never just one.
    ``gpu``: the GPU it should run on (a TensorRT-RTX engine then also targets its architecture)."""
    target = entry.target
    options = entry.options
    precisions = list(manifest.precisions) if manifest is not None else []
    if not precisions:
        precisions = [entry.precision]
    if entry.precision not in precisions:
        precisions.append(entry.precision)
    source = manifest.model.source if manifest is not None else None
    args = ["vitmsn-export", "--model", str(source or "<the model>")]
    for p in precisions:
        args += ["--precision", p]
    if "int8" in precisions:
        int8 = manifest.precisions.get("int8") if manifest is not None else None
        calib = int8.calibration if int8 is not None else None
        args += ["--calib-images", str(calib.source if calib is not None else "<the calibration images>")]
        if calib is not None and calib.count:
            args += ["--calib-samples", str(calib.count)]
    if manifest is not None:
        b = manifest.batch
        args += ["--batch", f"{b.min}:{b.opt}:{b.max}"]
        if manifest.opset:
            args += ["--opset", str(manifest.opset)]
    args += ["--engine", "require", "--target", target]
    aot = [str(t).lower() for t in (options.get("aot_targets") or entry.aot_targets or [])]
    if target == "tensorrt-rtx" and gpu is not None:
        here = "sm" + gpu.compute_capability.replace(".", "")
        aot = aot + [here] if aot and here not in aot else aot
    if target == "tensorrt-rtx" and aot:
        args += ["--aot-targets", ",".join(aot)]
    if options.get("hardware_compatibility"):
        args += ["--hardware-compat", str(options["hardware_compatibility"])]
    if options.get("version_compatible") or entry.version_compatible:
        args.append("--version-compat")
    if options.get("workspace_bytes"):
        args += ["--workspace", f"{int(options['workspace_bytes']) // (1 << 20)}M"]
    if options.get("builder_optimization_level") is not None:
        args += ["--builder-opt-level", str(options["builder_optimization_level"])]
    if options.get("timing_cache"):
        args += ["--timing-cache", str(options["timing_cache"])]
    args += ["--out", str(root)]
    return " ".join(shlex.quote(a) for a in args)


def engine_problems(entry: EngineEntry, *, runtime_version: str | None, gpus: Iterable[Gpu],
                    root: Any = "ARTIFACTS", gpu_index: int = 0,
                    manifest: "Manifest | None" = None, with_rebuild: bool = True) -> list[str]:
    """Why the engine ``entry`` cannot run on CUDA device ``gpu_index`` here (empty when it can).

    ``runtime_version`` is the installed module's ``__version__`` (None: not importable) and
    ``gpus`` what :func:`vitmsn.runtime.backends.device.cuda_gpus` reports. The last problem ends with the
    command that rebuilds the engine (with the manifest's options), except where no GPU was found:
    no rebuild can make an engine run on a machine without one.
    """
    name, target, built = entry.file, entry.target, entry.tensorrt_version
    problems = []
    gpus = list(gpus)
    gpu = gpus[gpu_index] if 0 <= gpu_index < len(gpus) else None
    if not gpus:
        return [f"{name}: needs an NVIDIA GPU with a CUDA driver, and none was found (driver query; "
                "CUDA_VISIBLE_DEVICES applies)"]
    if gpu is None:
        return [f"{name}: GPU {gpu_index} was asked for, but the driver reports {len(gpus)} GPU(s)"]
    if runtime_version is None:
        module = "tensorrt_rtx" if target == "tensorrt-rtx" else "tensorrt"
        problems.append(f"{name}: built for {target} {built}, but the {module!r} module is not importable here")
    elif not versions_compatible(built, runtime_version, target, entry.version_compatible):
        problems.append(f"{name}: built with {target} {built}, but this machine has {target} {runtime_version} "
                        "(engines only run on the release that built them)")
    wanted = [c for c in (normalize_cc(v) for v in entry.compute_capabilities) if c]
    if wanted and not entry.hardware_compatible and gpu.compute_capability not in wanted:
        problems.append(f"{name}: built for compute capability {', '.join(wanted)}, but GPU {gpu.index} "
                        f"({gpu.name}) is {gpu.compute_capability}")
    if problems and with_rebuild:
        command = rebuild_command(entry, manifest, root, gpu)
        problems[-1] += f"; rebuild it for this machine: {command}; or run it with --backend onnxruntime"
    return problems
