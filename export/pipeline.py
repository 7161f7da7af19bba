"""The whole export run behind ``vitmsn-export``: checkpoint -> ONNX -> checks -> manifest.

Each step is a named function from the other modules; this module only sequences them, records
what they did in the manifest and report, and decides the outcome:

* bad options or input -> :class:`InputError` before anything is written (exit 2);
* artifacts written but a check or gate failed -> :class:`ValidationFailed` (exit 1).

The manifest is removed when a run starts and written last, so an interrupted run never leaves
a directory that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vitmsn
from vitmsn.errors import InputError, ValidationFailed
from vitmsn.runtime.manifest import MANIFEST_NAME, PRECISIONS, SCHEMA_VERSION, Manifest, sha256_file

from . import checks
from .checkpoint import Checkpoint, load_checkpoint
from .model import EXPORT_ATTENTION, Attention
from .onnx_export import onnx_from_model
from .report import write_export_report
from .spec import DEFAULT_OPSET, SUPPORTED_OPSETS, BatchRange, ExportSpec

log = logging.getLogger(__name__)

ENGINE_MODES = ("auto", "require", "skip")
TARGETS = ("tensorrt", "tensorrt-rtx")


@dataclass(frozen=True)
class ExportOptions:
    model: str
    out: Path
    precisions: tuple[str, ...] = ("fp32",)
    batch: BatchRange = BatchRange()
    opset: int = DEFAULT_OPSET
    attention: Attention = EXPORT_ATTENTION
    engine: str = "auto"
    target: str = "tensorrt"
    calib_images: Path | None = None
    calib_samples: int = 128
    validate_images: Path | None = None
    fail_on_drift: bool = False

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise InputError(f"--precision {unknown[0]}: unknown; choose from {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:  # the reference graph is always exported
            object.__setattr__(self, "precisions", ("fp32",) + tuple(self.precisions))
        if self.opset not in SUPPORTED_OPSETS:
            raise InputError(f"--opset {self.opset}: unsupported; use {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}")
        if self.engine not in ENGINE_MODES:
            raise InputError(f"--engine {self.engine}: choose from {', '.join(ENGINE_MODES)}")
        if self.target not in TARGETS:
            raise InputError(f"--target {self.target}: choose from {', '.join(TARGETS)}")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out}: exists and is not a directory")
        for option, path in (("--calib-images", self.calib_images), ("--validate-images", self.validate_images)):
            if path is not None and not Path(path).is_dir():
                raise InputError(f"{option} {path}: no such directory")
        not_yet = [p for p in self.precisions if p != "fp32"]
        if not_yet:
            raise InputError(f"--precision {not_yet[0]}: not available in this version (fp32 only)")


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    stages: list[checks.StageResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    @property
    def failures(self) -> list[checks.StageResult]:
        return [s for s in self.stages if not s.passed]


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "vitmsn": vitmsn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _ort_runner(path: Path, input_name: str):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {input_name: x})))

    return run


def _torch_runner(model: torch.nn.Module, spec: ExportSpec):
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outs = model(torch.from_numpy(x))
        return {name: t.numpy() for name, t in zip(spec.output_names, outs)}

    return run


def fp32_stages(path: Path, spec: ExportSpec, model: torch.nn.Module) -> list[checks.StageResult]:
    """The staged checks of the reference graph; a failed stage skips the ones after it."""
    import onnx

    stages = [checks.check_onnx_checker(path)]
    if not stages[-1].passed:
        return stages + [checks.skipped("io_signature", "onnx_checker failed"),
                         checks.skipped("onnxruntime_parity", "onnx_checker failed")]
    stages.append(checks.check_io_signature(onnx.load(str(path), load_external_data=False), spec))
    if not stages[-1].passed:
        return stages + [checks.skipped("onnxruntime_parity", "io_signature failed")]
    stages.append(checks.check_runtime_parity(_ort_runner(path, spec.input.name), _torch_runner(model, spec), spec))
    return stages


def manifest_skeleton(opts: ExportOptions, ck: Checkpoint, spec: ExportSpec) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "source": opts.model,
            "directory": str(ck.directory),
            "task": spec.task,
            "architecture": "ViTMSNForImageClassification" if spec.task == "image-classification" else "ViTMSNModel",
            "config": ck.arch.to_dict(),
            "num_labels": ck.num_labels,
            "checkpoint_sha256": ck.sha256,
            "weight_files": ck.weight_files,
            "attention": opts.attention,
            "gflops_per_image": round(ck.arch.gflops_per_image(), 4),
        },
        "preprocess": dict(ck.preprocess.to_manifest(), source=ck.preprocess_source),
        "labels": {str(k): v for k, v in sorted(ck.labels.items())},
        **spec.io_dict(),
        "batch": opts.batch.to_dict(),
        "opset": opts.opset,
        "precisions": {},
        "engines": [],
        "versions": tool_versions(),
    }


def run_export(opts: ExportOptions) -> ExportResult:
    """Run the export. Raises InputError (nothing written) or ValidationFailed (artifacts written)."""
    started = time.perf_counter()
    ck = load_checkpoint(opts.model)
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)

    model = ck.build_model(opts.attention)
    fp32_path = out / "model.fp32.onnx"
    log.info("exporting %s (%s, %s attention) to %s", opts.model, spec.task, opts.attention, fp32_path)
    t0 = time.perf_counter()
    onnx_from_model(model, spec, fp32_path, opset=opts.opset, batch=opts.batch)
    export_seconds = time.perf_counter() - t0

    stages = fp32_stages(fp32_path, spec, model)
    data = manifest_skeleton(opts, ck, spec)
    data["precisions"]["fp32"] = {
        "file": fp32_path.name,
        "sha256": sha256_file(fp32_path),
        "size_bytes": fp32_path.stat().st_size,
        "io_dtype": "float32",
        "export_seconds": round(export_seconds, 2),
        "validation": {s.stage: {"passed": s.passed, "detail": s.detail} for s in stages},
    }
    result = ExportResult(out, Manifest(out, data), stages)
    if opts.engine != "skip":
        result.notes.append(f"no engine built: engine builds arrive with the precision release (--engine {opts.engine})")
        if opts.engine == "require":
            raise InputError("--engine require: this version builds no TensorRT engine; use --engine auto or skip")

    data["total_seconds"] = round(time.perf_counter() - started, 2)
    data["reports"] = write_export_report(out, data, stages)
    data["passed"] = result.passed
    result.manifest.save()
    if not result.passed:
        failed = "; ".join(f"{s.stage}: {s.detail}" for s in result.failures)
        raise ValidationFailed(f"{out}: artifacts written, but checks failed ({failed}); see {out / 'report.md'}")
    return result
