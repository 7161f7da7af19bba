"""The typed entries of manifest.json, one frozen dataclass per kind of entry.

Each field says which JSON key it holds and how that value is checked (:func:`.fields.json_field`);
``from_json(obj, where)`` and ``to_json()`` (the CONTRACT.md shape) come from that one description
(:class:`.fields.Entry`), so a new field is one line. A bad value is an :class:`InputError` naming the
manifest file and JSON path. Fields a type does not model are kept in ``extra`` and written back
unchanged. The writer (``vitmsn.export``) and every reader build and read these same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field, replace
from typing import Any, Mapping

from .fields import (Entry, Where, dump, entry, field, integer, json_field, listing, load, number, obj, read_bool, read_int,
                     read_list, read_object, read_relpath, read_sha256, read_str, text)

# The one list of precisions, engine targets and CPU flavours: the export, selection, bench and Triton read these.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # bf16: OpenVINO BF16 inference of model.fp32.onnx (no graph of its own)
TASKS = ("image-classification", "feature-extraction")
TARGETS = ("tensorrt", "tensorrt-rtx")
DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64")
# ONNX Runtime CPU flavours of a precision: the graph a CPU runtime loads instead of the entry's own file
FLAVOURS = ("onnxruntime_cpu", "onnxruntime_optimized")
RESAMPLE = (0, 1, 2, 3, 4, 5)  # Pillow: nearest, lanczos, bilinear, bicubic, box, hamming
MAX_SIDE = 16384  # pixels; an input side beyond this is a typo, not a model
MAX_DIM = 1 << 24  # any tensor dimension (a 10**9 logits axis would be allocated by consumers)
ALPHA = ("drop", "composite")  # the preprocess block's transparency handling
MIN_STD = 1e-6  # normalisation divides by std: smaller values turn pixels into inf/NaN
VERDICTS = ("passed", "failed", "inconclusive")  # the verdict words (.verdicts)
BY = ("export", "validate")  # who wrote a verdict


@dataclass(frozen=True)
class FileRef(Entry):
    """A file of the artifacts directory: its relative name, SHA-256 and size."""

    file: str = json_field(read_relpath)
    sha256: str = json_field(read_sha256)
    size_bytes: int | None = json_field(integer(0), default=None)


def _dims(value: Any, where: Where) -> tuple[int | str, ...]:
    """A shape: sizes from 1 to MAX_DIM, or names of symbolic axes ("batch")."""
    return tuple(d if isinstance(d, str) and d else read_int(d, where.at(i), minimum=1, maximum=MAX_DIM)
                 for i, d in enumerate(read_list(value, where, nonempty=True)))


@dataclass(frozen=True)
class TensorSpec(Entry):
    name: str = json_field(text())
    dtype: str = json_field(text(DTYPES))
    shape: tuple[int | str, ...] = json_field(_dims)  # a str is a symbolic axis ("batch")


@dataclass(frozen=True)
class BatchSpec(Entry):
    min: int = json_field(integer(1, MAX_DIM))
    opt: int = json_field(integer(1, MAX_DIM))
    max: int = json_field(integer(1, MAX_DIM))

    def check(self, where: Where) -> None:
        if not self.min <= self.opt <= self.max:
            raise where.error(f"min {self.min}, opt {self.opt}, max {self.max}: expected min <= opt <= max")


def _triple(minimum: float) -> Any:
    return json_field(listing(number(minimum, 1e6), length=3))


@dataclass(frozen=True)
class PreprocessSpec(Entry):
    """The manifest's ``preprocess`` block (what :class:`PreprocessConfig.from_manifest` reads)."""

    height: int = json_field(integer(1, MAX_SIDE), key="size.height")
    width: int = json_field(integer(1, MAX_SIDE), key="size.width")
    resample: int = json_field(integer(0, max(RESAMPLE)))
    do_resize: bool = json_field(read_bool)
    do_rescale: bool = json_field(read_bool)
    rescale_factor: float = json_field(number(1e-12, 1e6))
    do_normalize: bool = json_field(read_bool)
    image_mean: tuple[float, float, float] = _triple(-1e6)
    image_std: tuple[float, float, float] = _triple(MIN_STD)
    extra: dict[str, Any] = dc_field(default_factory=dict)
    # transparency: "drop" (convert("RGB")) or "composite" onto alpha_background; None: a manifest written before
    # the choice was recorded (composited onto white, as validated then; see vitmsn.runtime.images.preprocess)
    alpha: str | None = json_field(text(ALPHA), default=None)
    alpha_background: tuple[int, int, int] | None = json_field(listing(integer(0, 255), length=3), default=None)

    JSON_ORDER = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                  "image_std", "alpha", "alpha_background", "*")

    def check(self, where: Where) -> None:
        if self.alpha == "composite" and self.alpha_background is None:
            raise where.at("alpha_background").error("required field is missing")
        if self.alpha != "composite" and self.alpha_background is not None:
            raise where.at("alpha_background").error(f"given, but alpha is {self.alpha!r} (only 'composite' uses a background)")


CONFIG_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size")


def _config(value: Any, where: Where) -> dict[str, Any]:
    config = read_object(value, where)
    for key in CONFIG_INTS:
        read_int(field(config, key, where), where.at(key), minimum=1, maximum=MAX_DIM)
    return dict(config)


@dataclass(frozen=True)
class ModelInfo(Entry):
    source: str = json_field(text())
    task: str = json_field(text(TASKS))
    config: dict[str, Any] = json_field(_config)
    checkpoint_sha256: str = json_field(read_sha256)
    architecture: str | None = json_field(text(), default=None)
    extra: dict[str, Any] = dc_field(default_factory=dict)

    JSON_ORDER = ("source", "task", "architecture", "config", "checkpoint_sha256", "*")


@dataclass(frozen=True)
class CalibrationRecord(Entry):
    """What an INT8 graph was calibrated on: count, source, SHA-256 of the tensors, method."""

    source: str = json_field(text())
    count: int = json_field(integer(1))
    tensor_sha256: str = json_field(read_sha256, aliases=("sha256",))
    method: str | None = json_field(text(), default=None)
    extra: dict[str, Any] = dc_field(default_factory=dict)
    # SHA-256 of each calibration image's bytes and of its decoded pixels (vitmsn.calibration.content): gating
    # images with either are in sample. Empty in the int8 entry's copy and in manifests written before.
    images_sha256: tuple[str, ...] = json_field(listing(read_sha256), default=(), omit=lambda v: not v)
    pixels_sha256: tuple[str, ...] = json_field(listing(read_sha256), default=(), omit=lambda v: not v)

    JSON_ORDER = ("method", "source", "count", "sha256", "images_sha256", "pixels_sha256", "*", "tensor_sha256")

    def to_json(self, *, precision_entry: bool = False) -> dict[str, Any]:
        """The top-level ``calibration`` block, or (``precision_entry``) the one inside ``precisions.int8``,
        which also carries the tensors' hash under ``sha256``."""
        if precision_entry:
            return dump(replace(self, images_sha256=(), pixels_sha256=(), extra={"sha256": self.tensor_sha256, **self.extra}))
        return dump(self)


@dataclass(frozen=True)
class FlavourEntry(FileRef):
    """A CPU flavour of a precision (``model.int8.cpu.onnx``, ``model.fp32.ort.onnx``)."""

    io_dtype: str = json_field(text(DTYPES), default="float32")
    extra: dict[str, Any] = dc_field(default_factory=dict)


@dataclass(frozen=True)
class PrecisionEntry(FileRef):
    """One exported graph (``precisions.<name>``) with its validation record and CPU flavours."""

    io_dtype: str = json_field(text(DTYPES), default="float32")
    calibration: CalibrationRecord | None = json_field(entry(CalibrationRecord), default=None)
    flavours: dict[str, FlavourEntry] = dc_field(default_factory=dict)  # one key per FLAVOURS name, beside "file"
    extra: dict[str, Any] = dc_field(default_factory=dict)

    JSON_ORDER = ("file", "sha256", "size_bytes", "io_dtype", "*", "calibration", *FLAVOURS, "validation")

    @classmethod
    def from_json(cls, value: Any, where: Where = Where()) -> "PrecisionEntry":
        flavours = {k: FlavourEntry.from_json(v, where.at(k)) for k, v in read_object(value, where).items()
                    if k in FLAVOURS and v is not None}
        return load(cls, value, where, known=FLAVOURS, flavours=flavours)

    def to_json(self) -> dict[str, Any]:
        inner = {k: v.to_json() for k, v in self.flavours.items()}
        if self.calibration is not None:
            inner["calibration"] = self.calibration.to_json(precision_entry=True)
        return dump(replace(self, calibration=None, extra={**self.extra, **inner}))

    @property
    def cpu_flavour(self) -> FlavourEntry | None:
        """The graph ONNX Runtime's CPU provider should load for this precision, when one was written."""
        return next((self.flavours[k] for k in FLAVOURS if k in self.flavours), None)

    @property
    def validation(self) -> dict[str, Any]:
        return dict(self.extra.get("validation") or {})


def _names(value: Any, where: Where) -> tuple[str, ...]:
    """Strings; numbers (a compute capability written as 8.6) are taken as their text."""
    return tuple(read_str(str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v, where.at(i))
                 for i, v in enumerate(read_list(value, where)))


@dataclass(frozen=True)
class EngineEntry(FileRef):
    """A TensorRT engine: what built it, for which GPUs, with which optimization profile."""

    precision: str = json_field(text(PRECISIONS), default="fp32", required=True)
    target: str = json_field(text(TARGETS), default="tensorrt")
    tensorrt_version: str = json_field(text(), default="?", required=True)
    onnx: str | None = json_field(read_relpath, default=None)
    io_dtype: str | None = json_field(text(DTYPES), default=None)
    compute_capabilities: tuple[str, ...] = json_field(_names, default=())
    aot_targets: tuple[str, ...] = json_field(_names, default=(), omit=lambda v: not v)
    profile: dict[str, Any] = json_field(obj, default_factory=dict)
    version_compatible: bool = json_field(read_bool, default=False)
    hardware_compatible: bool = json_field(read_bool, default=False)
    extra: dict[str, Any] = dc_field(default_factory=dict)

    JSON_ORDER = ("file", "sha256", "size_bytes", "precision", "target", "onnx", "tensorrt_version", "io_dtype",
                  "aot_targets", "compute_capabilities", "profile", "version_compatible", "hardware_compatible", "*")

    @property
    def int8_execution(self) -> dict[str, Any] | None:
        """What the engine computes for an INT8 Q/DQ graph, as the builder recorded it (int8 engines only)."""
        value = self.extra.get("int8_execution")
        return dict(value) if isinstance(value, dict) else None

    @property
    def options(self) -> dict[str, Any]:
        """The builder options it was built with (what the rebuild command repeats)."""
        value = self.extra.get("options")
        return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class LogEntry(FileRef):
    """The export's log (``logs``: ``export.log``, third-party output of the run) with its SHA-256."""

    extra: dict[str, Any] = dc_field(default_factory=dict)  # "content": what the log holds


@dataclass(frozen=True)
class CheckpointFiles(Entry):
    """``checkpoint``: a Hugging Face checkpoint directory written with the artifacts (a few-shot export's fitted
    classifier), every file with its SHA-256."""

    directory: str = json_field(read_relpath)
    files: tuple[FileRef, ...] = json_field(listing(entry(FileRef), nonempty=True))


@dataclass(frozen=True)
class ReportFile:
    """A report (``reports.<kind>``); its SHA-256 sits in ``report_sha256.<kind>``, None in older manifests."""

    kind: str
    file: str
    sha256: str | None = None


def reports_from_json(obj: Mapping[str, Any], where: Where) -> tuple[ReportFile, ...]:
    names = read_object(obj.get("reports") or {}, where.at("reports"))
    hashes = read_object(obj.get("report_sha256") or {}, where.at("report_sha256"))
    out = []
    for kind, name in names.items():
        sha = hashes.get(kind)
        out.append(ReportFile(kind, read_relpath(name, where.at("reports").at(kind)),
                              None if sha is None else read_sha256(sha, where.at("report_sha256").at(kind))))
    return tuple(out)


def reports_to_json(reports: tuple[ReportFile, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"reports": {r.kind: r.file for r in reports}}
    if any(r.sha256 for r in reports):
        out["report_sha256"] = {r.kind: r.sha256 for r in reports if r.sha256}
    return out


# ---- verdicts (rules in .verdicts) ---------------------------------------------------------------
def _plain_text(value: Any, where: Where) -> str:
    return str(value)


@dataclass(frozen=True)
class GateRecord(Entry):
    """One gate as decided: the figure, its one-sided bound, the threshold, the sample size."""

    gate: str = json_field(text())
    metric: str = json_field(text())
    op: str = json_field(text((">=", "<=")))
    threshold: float = json_field(number())
    n: int = json_field(integer(0))
    verdict: str = json_field(text(VERDICTS))
    value: float | None = json_field(number(), default=None, omit=lambda v: False)
    bound: float | None = json_field(number(), default=None, omit=lambda v: False)
    needed: int | None = json_field(integer(1), default=None, omit=lambda v: False)  # inconclusive: images that would decide
    source: str = json_field(text(), default="default")

    JSON_ORDER = ("gate", "metric", "op", "threshold", "value", "bound", "n", "verdict", "needed", "source")

    def describe(self) -> str:
        shown = "none" if self.bound is None else f"{self.bound:.6g}"
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        text = f"{self.metric} {value} (bound {shown}, n={self.n}) {self.op} {self.threshold:g}: {self.verdict}"
        return text + (f", {self.needed} images would decide" if self.verdict == "inconclusive" and self.needed else "")


@dataclass(frozen=True)
class VerdictRecord(Entry):
    """The latest verdict of one precision on one backend (and flavour: "" the precision's own graph)."""

    precision: str = json_field(text())
    backend: str = json_field(text())
    flavour: str = json_field(_plain_text, required=True, omit=lambda v: False)  # "": the precision's own graph
    verdict: str = json_field(text(VERDICTS))
    file: str = json_field(read_relpath)
    sha256: str = json_field(read_sha256)
    manifest_sha256: str = json_field(read_sha256)
    images: dict[str, Any] = json_field(obj)  # count, sha256 (of the images' bytes, in order), source
    gates: tuple[GateRecord, ...] = json_field(listing(entry(GateRecord)))
    by: str = json_field(text(BY))
    report: str = json_field(_plain_text, default="", omit=lambda v: False)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.precision, self.backend, self.flavour

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (f" ({self.flavour})" if self.flavour else "")

    def reason(self) -> str:
        """Why it is not passed, in one line: the gates that failed or could not decide."""
        bad = [g for g in self.gates if g.verdict != "passed"]
        return "; ".join(g.describe() for g in bad) or self.verdict
