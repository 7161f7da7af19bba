"""ONNX -> serialized TensorRT engine: one builder for ``tensorrt`` 10.x, 11.x and ``tensorrt_rtx``.

The three share the builder / ONNX parser / optimization profile / serialization API; where they
differ the code feature-detects with ``hasattr``/``getattr`` and never compares version strings:

* the network is strongly typed whenever ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists
  (TensorRT 10, 11, RTX): precision comes from the ONNX graph (FP32, AutoCast FP16, Q/DQ INT8);
* precision builder flags (``BuilderFlag.FP16``/``INT8``) are used only for a weakly typed build
  (``strongly_typed=False``), and only where the API still has them (TensorRT 10.x); TensorRT 11
  removed them, and asking for one there is an error that names the version;
* TensorRT-RTX builds ahead of time without a GPU for the compute capabilities it is given
  (``aot_targets``); its timing cache is a no-op, so none is used there;
* the timing cache file (``timing_cache``) is loaded before and saved after every TensorRT build,
  so later builds reuse measured tactics: a cache TensorRT refuses (another GPU or release) is
  replaced by a fresh one with a note, and at save time what another build wrote meanwhile is
  merged in (``ITimingCache.combine``) before the file is replaced atomically;
* every option is checked by :func:`check_engine_options` before anything is written (the export
  pipeline calls it first), so a bad ``--aot-targets`` is exit 2 with nothing on disk;
* the compute capabilities recorded are real: TensorRT's the build GPU's (from the CUDA driver,
  :mod:`vitmsn.runtime.backends.device`), TensorRT-RTX's the architectures it compiled for (this GPU's when
  one is present and no ``--aot-targets`` were given), never a placeholder.

``tests/test_tensorrt_api_static.py`` type-checks this module against the TensorRT 10.13 stubs,
stubs generated from the TensorRT 11.x bindings, and stubs generated from TensorRT-RTX.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, SupportsInt

from vitmsn.core.errors import InputError
from vitmsn.runtime.backends import device
from vitmsn.runtime.manifest import atomic_path

from .timing_cache import attach_timing_cache, save_timing_cache

from vitmsn.export.fp32.spec import BatchRange

if TYPE_CHECKING:  # the static check (tests/tensorrt_static_check.py) supplies each API in turn as `tensorrt`
    import tensorrt as trt

log = logging.getLogger(__name__)

TARGET_MODULES = device.TENSORRT_MODULES  # engine target -> Python module, one table for builder and runtime
INSTALL_HINT = {"tensorrt": "pip install 'vitmsn[tensorrt]' (TensorRT needs an NVIDIA GPU and driver)",
                "tensorrt-rtx": "pip install tensorrt-rtx-cu13 (builds ahead of time, no GPU needed)"}
HARDWARE_COMPAT = {"ampere-plus": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}
# TensorRT-RTX compiles FP32 GEMMs only from Ampere on (Turing fails with "FP32 GEMM is not
# supported"), so the default ahead-of-time list is every SM >= 80 the installed module offers.
DEFAULT_MIN_AOT_SM = 80
# What a TensorRT-RTX engine computes for the W8A8 Q/DQ INT8 graph, as far as NVIDIA documents it
# (recorded in the manifest's engine entry and shown by `vitmsn inspect`).
RTX_INT8_EXECUTION = {
    "graph": "W8A8 explicit Q/DQ (INT8 weights per channel, INT8 activations per tensor)",
    "engine": "undocumented: TensorRT-RTX accepts and builds the Q/DQ graph, but its documentation does not say "
              "whether GEMMs run INT8 x INT8 or dequantize INT8 weights to FP16 (weight-only); its 1.7 release "
              "notes name only INT8 weight-only-quantized convolutions, and NVIDIA's Model Optimizer support "
              "matrix lists W8A8 INT8 deployment on TensorRT, not TensorRT-RTX",
    "verified": False,
    "sources": ["https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/work-quantized-types.html",
                "https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/getting-started/release-notes-1/1.7.html",
                "https://nvidia.github.io/Model-Optimizer/guides/0_support_matrix.html"],
}
TENSORRT_INT8_EXECUTION = {
    "graph": "W8A8 explicit Q/DQ (INT8 weights per channel, INT8 activations per tensor)",
    "engine": "INT8 x INT8 GEMMs where TensorRT fuses the Q/DQ pairs (explicit quantization)",
    "verified": False,
}
# The exceptions TensorRT's Python bindings raise (pybind11: RuntimeError, TypeError, ValueError,
# IndexError), file I/O and memory exhaustion: an engine step that hits one fails its stage.
BUILD_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, OSError, MemoryError, InputError)


@dataclass(frozen=True)
class EngineOptions:
    target: str = "tensorrt"
    batch: BatchRange = BatchRange()
    workspace_bytes: int | None = None  # None: the builder's default (all device memory)
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None  # 0-5; None: the builder's default (3)
    hardware_compatibility: str | None = None  # "ampere-plus" | "same-compute-capability"
    version_compatible: bool = False
    aot_targets: tuple[str, ...] = ()  # TensorRT-RTX compute capabilities, e.g. ("sm86", "sm89")
    strongly_typed: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGET_MODULES:
            raise InputError(f"--target {self.target}: choose from {', '.join(TARGET_MODULES)}")
        if self.builder_optimization_level is not None and not 0 <= self.builder_optimization_level <= 5:
            raise InputError(f"--builder-opt-level {self.builder_optimization_level}: must be 0-5")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPAT:
            raise InputError(f"--hardware-compat {self.hardware_compatibility}: choose from {', '.join(HARDWARE_COMPAT)}")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise InputError(f"--workspace {self.workspace_bytes}: must be positive")
        object.__setattr__(self, "aot_targets", tuple(t.strip().upper() for t in self.aot_targets if t.strip()))
        bad = [t for t in self.aot_targets if not (t.startswith("SM") and t[2:].isdigit())]
        if bad:
            raise InputError(f"--aot-targets {','.join(bad).lower()}: expected compute capabilities like sm86,sm89")

    def to_manifest(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch"), d.pop("progress")
        d["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        d["aot_targets"] = list(self.aot_targets)
        return d


@dataclass(frozen=True)
class EngineResult:
    path: Path
    precision: str
    target: str
    tensorrt_version: str
    compute_capabilities: tuple[str, ...]  # AOT targets (RTX), or the build GPU's ("sm_90")
    aot: bool
    profile: dict[str, dict[str, list[int]]]
    build_seconds: float
    strongly_typed: bool
    precision_flags: tuple[str, ...]
    options: EngineOptions
    notes: tuple[str, ...] = field(default=())

    def manifest_fields(self) -> dict[str, Any]:
        """Fields of the manifest's engine entry that only the builder knows."""
        fields: dict[str, Any] = {}
        if self.precision == "int8":
            fields["int8_execution"] = dict(RTX_INT8_EXECUTION if self.target == "tensorrt-rtx" else TENSORRT_INT8_EXECUTION)
        return fields


@dataclass(frozen=True)
class BuilderStatus:
    available: bool
    reason: str
    module: ModuleType | None = None


def gpu_present() -> bool:
    """A CUDA GPU is usable here, as the CUDA driver reports it (honours ``CUDA_VISIBLE_DEVICES`` and a
    container's devices): the runtime's one detection path, :func:`vitmsn.runtime.backends.device.cuda_gpus`."""
    return device.has_cuda_gpu()


def check_engine_options(options: EngineOptions) -> None:
    """Every engine option against the installed builder, before anything is written; raises InputError.

    First what the target rules out (``--aot-targets`` is TensorRT-RTX's; RTX has no hardware or
    version compatibility), then what depends on the installed module: the ahead-of-time targets
    it offers, the hardware-compatibility level and the version-compatible flag. The module checks
    are skipped when the builder cannot be imported (then no engine is built)."""
    if options.target == "tensorrt" and options.aot_targets:
        raise InputError("--aot-targets needs --target tensorrt-rtx (TensorRT builds for the GPU it runs on)")
    if options.target == "tensorrt-rtx" and options.hardware_compatibility is not None:
        raise InputError("--hardware-compat is not supported by TensorRT-RTX; its engines cover the compute "
                         "capabilities given with --aot-targets")
    if options.target == "tensorrt-rtx" and options.version_compatible:  # needs libnvinfer_lean, not in the RTX wheel
        raise InputError("--version-compat is not supported by TensorRT-RTX (no lean runtime); use --target tensorrt")
    status = builder_status(options.target)
    if not status.available or status.module is None:
        return
    trt, version = status.module, str(getattr(status.module, "__version__", "?"))
    if options.target == "tensorrt-rtx":
        offered = _offered_sms(trt)
        unknown = [t for t in options.aot_targets if t not in offered]
        if unknown:
            raise InputError(f"--aot-targets {','.join(unknown).lower()}: not offered by TensorRT-RTX {version} "
                             f"(it offers {', '.join(n.lower() for n in offered)})")
    if options.hardware_compatibility is not None:
        if getattr(getattr(trt, "HardwareCompatibilityLevel", None), HARDWARE_COMPAT[options.hardware_compatibility], None) is None:
            raise InputError(f"--hardware-compat {options.hardware_compatibility} is not available in "
                             f"{options.target} {version}")
    if options.version_compatible and getattr(trt.BuilderFlag, "VERSION_COMPATIBLE", None) is None:
        raise InputError(f"--version-compat is not available in {options.target} {version}")


def _offered_sms(trt: Any) -> list[str]:
    enum = getattr(trt, "ComputeCapability", None)
    names = [n for n in dir(enum) if n.startswith("SM") and n[2:].isdigit()] if enum is not None else []
    return sorted(names, key=lambda n: int(n[2:]))


def builder_status(target: str) -> BuilderStatus:
    """Whether ``target``'s builder can run here, and if not, a plain sentence saying why."""
    name = TARGET_MODULES[target]
    try:
        module = importlib.import_module(name)
    except (ImportError, OSError) as exc:
        return BuilderStatus(False, f"{name} is not installed or cannot load its libraries ({exc}); {INSTALL_HINT[target]}")
    if target == "tensorrt" and not gpu_present():
        return BuilderStatus(False, "TensorRT is installed but no NVIDIA GPU/driver is visible, and its builder needs "
                                    "one; use --target tensorrt-rtx to build ahead of time without a GPU")
    return BuilderStatus(True, f"{name} {getattr(module, '__version__', '?')}", module)


def profile_of(input_name: str, chw: tuple[int, ...], batch: BatchRange) -> dict[str, dict[str, list[int]]]:
    return {input_name: {k: [n, *chw] for k, n in batch.to_dict().items()}}


class _Monitor:
    """Throttled build-progress lines on stderr (TensorRT's IProgressMonitor callbacks)."""

    def __init__(self, label: str, enabled: bool, interval: float = 5.0) -> None:
        self.label, self.enabled, self.interval = label, enabled, interval
        self.started = self.last = time.perf_counter()
        self.phases: dict[str, tuple[int, int]] = {}

    def event(self, phase: str, step: int, steps: int) -> None:
        self.phases[phase] = (step, steps)
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            sys.stderr.write(f"{self.label}: {phase} {step}/{steps}, {now - self.started:.0f}s elapsed\n")
            sys.stderr.flush()


def engine_from_onnx(onnx_path: str | Path, out_path: str | Path, *, precision: str, input_name: str,
                     input_chw: tuple[int, ...], options: EngineOptions) -> EngineResult:
    """Build ``onnx_path`` into a serialized engine at ``out_path`` (atomically).

    Raises InputError when the builder is missing or an option is unavailable in the installed
    version (the message names it), RuntimeError when TensorRT rejects the graph or the build.
    """
    status = builder_status(options.target)
    if not status.available:
        raise InputError(f"--target {options.target}: {status.reason}")
    check_engine_options(options)
    is_rtx = options.target == "tensorrt-rtx"
    if TYPE_CHECKING:
        import tensorrt as trt  # the static check: TensorRT 10.x, 11.x or TensorRT-RTX, one at a time
    else:
        trt = status.module  # tensorrt or tensorrt_rtx (same API as TensorRT 11)
    version = str(getattr(trt, "__version__", "unknown"))
    notes: list[str] = []
    errors: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                errors.append(msg)
                log.error("%s: %s", options.target, msg)
            elif severity == trt.ILogger.WARNING:  # the builder's own chatter: export.log (the terminal with -v)
                log.info("%s builder warning: %s", options.target, msg)

    logger = _Logger()
    builder = trt.Builder(logger)
    strongly_typed = options.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RuntimeError(f"{Path(onnx_path).name}: the {options.target} ONNX parser rejected the graph: {problems}")

    config = builder.create_builder_config()
    precision_flags = _precision_flags(trt, config, precision, strongly_typed, version)
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if options.hardware_compatibility is not None:
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), HARDWARE_COMPAT[options.hardware_compatibility], None)
        if level is None:
            raise InputError(f"--hardware-compat {options.hardware_compatibility} is not available in {options.target} {version}")
        config.hardware_compatibility_level = level
    if options.version_compatible:
        flag = getattr(trt.BuilderFlag, "VERSION_COMPATIBLE", None)
        if flag is None:
            raise InputError(f"--version-compat is not available in {options.target} {version}")
        config.set_flag(flag)

    profile = builder.create_optimization_profile()
    shapes = profile_of(input_name, input_chw, options.batch)[input_name]
    profile.set_shape(input_name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(profile)
    recorded = {input_name: {k: [int(d) for d in dims] for k, dims in zip(("min", "opt", "max"), profile.get_shape(input_name))}}

    capabilities, aot = _compute_capabilities(trt, config, options, is_rtx, version, notes)
    cache = None
    if options.timing_cache is not None:
        if is_rtx:
            notes.append("timing cache not used: TensorRT-RTX has none (its timing-cache calls are no-ops)")
        else:
            cache = attach_timing_cache(config, Path(options.timing_cache), notes)

    monitor = _Monitor(f"building {Path(out_path).name}", options.progress)
    if hasattr(trt, "IProgressMonitor"):
        class _Progress(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: SupportsInt) -> None:
                monitor.event(phase_name, 0, int(num_steps))

            def step_complete(self, phase_name: str, step: SupportsInt) -> bool:
                monitor.event(phase_name, int(step) + 1, monitor.phases.get(phase_name, (0, 0))[1])
                return True

            def phase_finish(self, phase_name: str) -> None:
                pass

        config.progress_monitor = _Progress()

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise RuntimeError(f"{options.target} {version} could not build {Path(onnx_path).name}: "
                           + ("; ".join(errors[-3:]) or "no error message"))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    if cache is not None and options.timing_cache is not None:
        save_timing_cache(config, Path(options.timing_cache), notes)
    if options.progress:
        sys.stderr.write(f"built {Path(out_path).name} ({options.target} {version}) in {seconds:.1f}s\n")
    return EngineResult(Path(out_path), precision, options.target, version, capabilities, aot, recorded, seconds,
                        strongly_typed, precision_flags, options, tuple(notes))


def _precision_flags(trt_module: ModuleType, config: trt.IBuilderConfig, precision: str, strongly_typed: bool,
                     version: str) -> tuple[str, ...]:
    """Weakly typed builds only: the builder flags for ``precision``, where this TensorRT still has them."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = trt_module
    if strongly_typed:
        return ()  # the graph's types decide; TensorRT rejects precision flags on strongly typed networks
    wanted = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
    for name in wanted:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise InputError(f"BuilderFlag.{name} is not available in TensorRT {version} (removed in 11.x: precision "
                             "is written into the ONNX graph); build the strongly typed network instead")
        config.set_flag(flag)
    return wanted


def _compute_capabilities(trt_module: ModuleType, config: trt.IBuilderConfig, options: EngineOptions, is_rtx: bool,
                          version: str, notes: list[str]) -> tuple[tuple[str, ...], bool]:
    """Set TensorRT-RTX's ahead-of-time targets; for TensorRT, report the build GPU's capability."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = trt_module
    enum = getattr(trt, "ComputeCapability", None)
    if (not is_rtx or enum is None or not hasattr(config, "set_compute_capability")
            or not hasattr(config, "num_compute_capabilities")):
        if options.aot_targets:
            raise InputError(f"--aot-targets needs --target tensorrt-rtx ({options.target} {version} builds for "
                             "the GPU it runs on)")
        return (_current_gpu_capability(),), False
    offered = _offered_sms(trt)
    targets = list(options.aot_targets)
    if not targets:
        gpu = device.gpu(0)
        here = f"SM{gpu.compute_capability.replace('.', '')}" if gpu else None
        if here in offered:
            targets = [here]  # this GPU's architecture, named: the manifest records what was compiled
        else:
            targets = [n for n in offered if int(n[2:]) >= DEFAULT_MIN_AOT_SM]
            if gpu is not None:
                notes.append(f"GPU 0 ({gpu.name}, compute capability {gpu.compute_capability}) is not a TensorRT-RTX "
                             f"target; built ahead of time for {', '.join(t.lower() for t in targets)}")
    unknown = [t for t in targets if t not in offered]
    if unknown:
        raise InputError(f"--aot-targets {','.join(unknown).lower()}: not offered by TensorRT-RTX {version} "
                         f"(it offers {', '.join(n.lower() for n in offered)})")
    config.num_compute_capabilities = len(targets)
    for i, name in enumerate(targets):
        if not config.set_compute_capability(getattr(enum, name), i):
            raise RuntimeError(f"TensorRT-RTX {version} refused compute capability {name.lower()} (target {i + 1} of "
                               f"{len(targets)}); see its log above")
    return tuple(t.lower() for t in targets), True


def _current_gpu_capability() -> str:
    """The build GPU's compute capability as the CUDA driver reports it (``sm86``): TensorRT builds on
    CUDA device 0 unless told otherwise. Never from torch (a CPU build of torch sees no GPU)."""
    gpu = device.gpu(0)
    if gpu is None:
        raise RuntimeError("TensorRT needs a GPU to build, and the CUDA driver reports none")
    return "sm" + gpu.compute_capability.replace(".", "")
