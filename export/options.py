"""What one ``vitmsn-export`` run is asked to do (:class:`ExportOptions`), checked as a whole before anything
is read or written: a bad option is an :class:`InputError` (exit 2) naming the option."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from vitmsn.calibration import CalibrationMethod
from vitmsn.core.errors import InputError
from vitmsn.runtime.manifest import PRECISIONS, TARGETS

from vitmsn.export.engines.builder import EngineOptions
from vitmsn.export.fp32.model import EXPORT_ATTENTION, Attention
from vitmsn.export.fp32.spec import DEFAULT_OPSET, SUPPORTED_OPSETS, BatchRange
from vitmsn.export.staging import check_inputs_outside
from vitmsn.export.validation.gates import Gates

ENGINE_MODES = ("auto", "require", "skip")


@dataclass(frozen=True)
class ExportOptions:
    model: str
    out: Path
    revision: str | None = None  # hub ids: branch, tag or commit (default: main); the manifest records the commit
    precisions: tuple[str, ...] = ("fp32",)
    batch: BatchRange = BatchRange()
    parity_batch: tuple[int, ...] = ()  # ONNX Runtime parity batch sizes; () = the profile's (checks.parity_batch_sizes)
    opset: int = DEFAULT_OPSET
    attention: Attention = EXPORT_ATTENTION
    engine: str = "auto"
    target: str = "tensorrt"
    calib_images: Path | None = None
    calib_samples: int = 128
    calib_seed: int = 0
    calib_min_images: int = 16
    calib_cache: Path | None = None
    validate_images: Path | None = None
    fail_on_drift: bool = False
    # None: alpha dropped (Pillow convert("RGB"), as transformers.pipeline loads images); (R, G, B): transparency
    # composited onto that colour. Recorded in the manifest's preprocess block; used by every later step.
    alpha_background: tuple[int, int, int] | None = None
    fp16_io: bool = False  # FP16 graph inputs/outputs (default: FP32 I/O, casts inside)
    int8_method: str = "entropy"
    int8_exclude: tuple[str, ...] = ()
    int8_quantize_attention: bool = False  # also the attention MatMuls (activation x activation)
    int8_high_precision: str = "auto"  # auto: fp16 when an engine is built from it, else fp32
    int8_cpu: bool = True  # also write model.int8.cpu.onnx, placed for ONNX Runtime on CPU
    fp32_cpu: bool = True  # also write model.fp32.ort.onnx, the ONNX Runtime-fused FP32 graph (CPU flavour)
    # INT8 re-quantizations (most sensitive blocks kept in high precision) when the first INT8 graph fails its
    # drift gate; 0 disables. The CLI defaults to 3; the library keeps 0 so a caller opts into the extra time.
    int8_max_tries: int = 0
    engine_options: EngineOptions | None = None  # workspace, timing cache, ...; target/batch come from here
    gates: Gates = Gates()
    verbose: bool = False
    config_file: Path | None = None  # the vitmsn.toml / pyproject.toml the options came from
    # --fewshot DIR (class folders) or --fewshot-labels CSV: fit a classifier head on the backbone --model first
    # (vitmsn.export.fewshot); the fitted checkpoint (checkpoint/ in the artifacts) is what gets exported.
    fewshot: Path | None = None
    fewshot_labels: Path | None = None
    skip_unreadable: bool = False
    replace_head: bool = False

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
        check_inputs_outside(self.out, {"--calib-images": self.calib_images, "--validate-images": self.validate_images,
                                         "--calib-cache": self.calib_cache,
                                         "--model": None if self.model == "demo" else Path(self.model).expanduser(),
                                         "config file": self.config_file, "--fewshot": self.fewshot,
                                         "--fewshot-labels": self.fewshot_labels})
        if self.fewshot is None and self.fewshot_labels is None and (self.skip_unreadable or self.replace_head):
            raise InputError(f"--{'skip-unreadable' if self.skip_unreadable else 'replace-head'}: only means something "
                             "with --fewshot DIR or --fewshot-labels CSV")
        if "bf16" in self.precisions:
            from vitmsn.export.precision.bf16 import require_openvino

            require_openvino()
        if "int8" in self.precisions and self.calib_images is None:
            raise InputError("--precision int8 needs --calib-images DIR (a folder of representative images)")
        if self.int8_method not in {m.value for m in CalibrationMethod}:
            raise InputError(f"--int8-method {self.int8_method}: choose from {', '.join(m.value for m in CalibrationMethod)}")
        if any(n < 1 for n in self.parity_batch):
            raise InputError(f"--parity-batch {','.join(map(str, self.parity_batch))}: batch sizes must be >= 1")
        if self.int8_max_tries < 0:
            raise InputError(f"--int8-max-tries {self.int8_max_tries}: must be >= 0 (0 disables re-quantization)")
        if self.int8_high_precision not in ("auto", "fp16", "fp32"):
            raise InputError(f"--int8-high-precision {self.int8_high_precision}: choose from auto, fp16, fp32")
        eo = self.engine_options or EngineOptions()
        object.__setattr__(self, "engine_options", replace(eo, target=self.target, batch=self.batch))
