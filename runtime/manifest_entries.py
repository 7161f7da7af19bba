"""The typed entries of manifest.json, one frozen dataclass per kind of entry.

Every type has ``from_json(obj, where)`` (validates type, range and finiteness of each field it
models, raising :class:`InputError` naming the manifest file and JSON path) and ``to_json()``
(the JSON the export writes, CONTRACT.md shape). Fields a type does not model are kept in
``extra`` and written back unchanged, so the JSON can grow without a reader losing anything.
The writer (``vitmsn.export``) and every reader build and read these same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping

from .manifest_fields import (Where, extra, field, read_bool, read_float, read_int, read_list, read_object,
                              read_relpath, read_sha256, read_str)

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


@dataclass(frozen=True)
class FileRef:
    """A file of the artifacts directory: its relative name, SHA-256 and size."""

    file: str
    sha256: str
    size_bytes: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: Where) -> "FileRef":
        size = obj.get("size_bytes")
        return cls(read_relpath(field(obj, "file", where), where.at("file")),
                   read_sha256(field(obj, "sha256", where), where.at("sha256")),
                   None if size is None else read_int(size, where.at("size_bytes"), minimum=0))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        if self.size_bytes is not None:
            out["size_bytes"] = self.size_bytes
        return out


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # a str is a symbolic axis ("batch")

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "TensorSpec":
        obj = read_object(obj, where)
        dims = read_list(field(obj, "shape", where), where.at("shape"), nonempty=True)
        shape = tuple(d if isinstance(d, str) and d else read_int(d, where.at("shape").at(i), minimum=1, maximum=MAX_DIM)
                      for i, d in enumerate(dims))
        return cls(read_str(field(obj, "name", where), where.at("name")),
                   read_str(field(obj, "dtype", where), where.at("dtype"), choices=DTYPES), shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class BatchSpec:
    min: int
    opt: int
    max: int

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "BatchSpec":
        obj = read_object(obj, where)
        lo, opt, hi = (read_int(field(obj, k, where), where.at(k), minimum=1, maximum=MAX_DIM) for k in ("min", "opt", "max"))
        if not lo <= opt <= hi:
            raise where.error(f"min {lo}, opt {opt}, max {hi}: expected min <= opt <= max")
        return cls(lo, opt, hi)

    def to_json(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class PreprocessSpec:
    """The manifest's ``preprocess`` block (what :class:`PreprocessConfig.from_manifest` reads)."""

    height: int
    width: int
    resample: int
    do_resize: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    extra: dict[str, Any] = dc_field(default_factory=dict)
    # transparency: "drop" (convert("RGB")) or "composite" onto alpha_background; None: a manifest written before
    # the choice was recorded (composited onto white, as validated then; see vitmsn.runtime.preprocess)
    alpha: str | None = None
    alpha_background: tuple[int, int, int] | None = None

    KNOWN = ("size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
             "alpha", "alpha_background")

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "PreprocessSpec":
        obj = read_object(obj, where)
        size = read_object(field(obj, "size", where), where.at("size"))
        h, w = (read_int(field(size, k, where.at("size")), where.at("size").at(k), minimum=1, maximum=MAX_SIDE)
                for k in ("height", "width"))

        def triple(key: str, minimum: float | None) -> tuple[float, float, float]:
            values = read_list(field(obj, key, where), where.at(key), length=3)
            a, b, c = (read_float(v, where.at(key).at(i), minimum=minimum, maximum=1e6) for i, v in enumerate(values))
            return a, b, c

        alpha, background = obj.get("alpha"), obj.get("alpha_background")
        if alpha is not None:
            alpha = read_str(alpha, where.at("alpha"), choices=ALPHA)
        if alpha == "composite":
            rgb = read_list(field(obj, "alpha_background", where), where.at("alpha_background"), length=3)
            background = tuple(read_int(v, where.at("alpha_background").at(i), minimum=0, maximum=255)
                               for i, v in enumerate(rgb))
        elif background is not None:
            raise where.at("alpha_background").error(f"given, but alpha is {alpha!r} (only 'composite' uses a background)")
        return cls(h, w, read_int(field(obj, "resample", where), where.at("resample"), minimum=0, maximum=max(RESAMPLE)),
                   read_bool(field(obj, "do_resize", where), where.at("do_resize")),
                   read_bool(field(obj, "do_rescale", where), where.at("do_rescale")),
                   read_float(field(obj, "rescale_factor", where), where.at("rescale_factor"), minimum=1e-12, maximum=1e6),
                   read_bool(field(obj, "do_normalize", where), where.at("do_normalize")),
                   triple("image_mean", -1e6), triple("image_std", MIN_STD), extra(obj, cls.KNOWN), alpha,
                   background)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "do_resize": self.do_resize, "size": {"height": self.height, "width": self.width},
            "resample": self.resample, "do_rescale": self.do_rescale, "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize, "image_mean": list(self.image_mean), "image_std": list(self.image_std)}
        if self.alpha is not None:
            out["alpha"] = self.alpha
        if self.alpha_background is not None:
            out["alpha_background"] = list(self.alpha_background)
        return {**out, **self.extra}


@dataclass(frozen=True)
class ModelInfo:
    source: str
    task: str
    config: dict[str, Any]
    checkpoint_sha256: str
    architecture: str | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict)

    KNOWN = ("source", "task", "config", "checkpoint_sha256", "architecture")
    CONFIG_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                   "patch_size")

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "ModelInfo":
        obj = read_object(obj, where)
        config = read_object(field(obj, "config", where), where.at("config"))
        for key in cls.CONFIG_INTS:
            read_int(field(config, key, where.at("config")), where.at("config").at(key), minimum=1, maximum=MAX_DIM)
        arch = obj.get("architecture")
        return cls(read_str(field(obj, "source", where), where.at("source")),
                   read_str(field(obj, "task", where), where.at("task"), choices=TASKS), dict(config),
                   read_sha256(field(obj, "checkpoint_sha256", where), where.at("checkpoint_sha256")),
                   None if arch is None else read_str(arch, where.at("architecture")), extra(obj, cls.KNOWN))

    def to_json(self) -> dict[str, Any]:
        out = {"source": self.source, "task": self.task}
        if self.architecture is not None:
            out["architecture"] = self.architecture
        return {**out, "config": dict(self.config), "checkpoint_sha256": self.checkpoint_sha256, **self.extra}


@dataclass(frozen=True)
class CalibrationRecord:
    """What an INT8 graph was calibrated on: count, source, SHA-256 of the tensors, method."""

    source: str
    count: int
    tensor_sha256: str
    method: str | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict)

    KNOWN = ("source", "count", "sha256", "tensor_sha256", "method")

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "CalibrationRecord":
        obj = read_object(obj, where)
        key = "tensor_sha256" if "tensor_sha256" in obj else "sha256"
        method = obj.get("method")
        return cls(read_str(field(obj, "source", where), where.at("source")),
                   read_int(field(obj, "count", where), where.at("count"), minimum=1),
                   read_sha256(field(obj, key, where), where.at(key)),
                   None if method is None else read_str(method, where.at("method")), extra(obj, cls.KNOWN))

    def to_json(self, *, precision_entry: bool = False) -> dict[str, Any]:
        """The top-level ``calibration`` block, or (``precision_entry``) the one inside ``precisions.int8``,
        which also carries ``method`` and the tensors' hash under ``sha256``."""
        out: dict[str, Any] = {}
        if self.method is not None:
            out["method"] = self.method
        out.update(source=self.source, count=self.count)
        if precision_entry:
            out["sha256"] = self.tensor_sha256
        return {**out, **self.extra, "tensor_sha256": self.tensor_sha256}


@dataclass(frozen=True)
class FlavourEntry(FileRef):
    """A CPU flavour of a precision (``model.int8.cpu.onnx``, ``model.fp32.ort.onnx``)."""

    io_dtype: str = "float32"
    extra: dict[str, Any] = dc_field(default_factory=dict)

    KNOWN = ("file", "sha256", "size_bytes", "io_dtype")

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "FlavourEntry":
        obj = read_object(obj, where)
        ref = FileRef.from_json(obj, where)
        return cls(ref.file, ref.sha256, ref.size_bytes,
                   read_str(obj.get("io_dtype", "float32"), where.at("io_dtype"), choices=DTYPES), extra(obj, cls.KNOWN))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "io_dtype": self.io_dtype, **self.extra}


@dataclass(frozen=True)
class PrecisionEntry(FileRef):
    """One exported graph (``precisions.<name>``) with its validation record and CPU flavours."""

    io_dtype: str = "float32"
    calibration: CalibrationRecord | None = None
    flavours: dict[str, FlavourEntry] = dc_field(default_factory=dict)
    extra: dict[str, Any] = dc_field(default_factory=dict)

    KNOWN = ("file", "sha256", "size_bytes", "io_dtype", "calibration") + FLAVOURS

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "PrecisionEntry":
        obj = read_object(obj, where)
        ref = FileRef.from_json(obj, where)
        calib = obj.get("calibration")
        flavours = {k: FlavourEntry.from_json(obj[k], where.at(k)) for k in FLAVOURS if obj.get(k) is not None}
        return cls(ref.file, ref.sha256, ref.size_bytes,
                   read_str(obj.get("io_dtype", "float32"), where.at("io_dtype"), choices=DTYPES),
                   None if calib is None else CalibrationRecord.from_json(calib, where.at("calibration")),
                   flavours, extra(obj, cls.KNOWN))

    @property
    def cpu_flavour(self) -> FlavourEntry | None:
        """The graph ONNX Runtime's CPU provider should load for this precision, when one was written."""
        return next((self.flavours[k] for k in FLAVOURS if k in self.flavours), None)

    @property
    def validation(self) -> dict[str, Any]:
        return dict(self.extra.get("validation") or {})

    def to_json(self) -> dict[str, Any]:
        out = {**super().to_json(), "io_dtype": self.io_dtype}
        rest = dict(self.extra)
        validation = rest.pop("validation", None)
        out.update(rest)
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_json(precision_entry=True)
        out.update({k: v.to_json() for k, v in self.flavours.items()})
        if validation is not None:
            out["validation"] = validation
        return out


@dataclass(frozen=True)
class EngineEntry(FileRef):
    """A TensorRT engine: what built it, for which GPUs, with which optimization profile."""

    precision: str = "fp32"
    target: str = "tensorrt"
    tensorrt_version: str = "?"
    onnx: str | None = None
    io_dtype: str | None = None
    compute_capabilities: tuple[str, ...] = ()
    aot_targets: tuple[str, ...] = ()
    profile: dict[str, Any] = dc_field(default_factory=dict)
    version_compatible: bool = False
    hardware_compatible: bool = False
    extra: dict[str, Any] = dc_field(default_factory=dict)

    KNOWN = ("file", "sha256", "size_bytes", "precision", "target", "tensorrt_version", "onnx", "io_dtype",
             "compute_capabilities", "aot_targets", "profile", "version_compatible", "hardware_compatible")

    @classmethod
    def from_json(cls, obj: Any, where: Where = Where()) -> "EngineEntry":
        obj = read_object(obj, where)
        ref = FileRef.from_json(obj, where)

        def strings(key: str) -> tuple[str, ...]:
            values = read_list(obj.get(key) or [], where.at(key))
            return tuple(str(read_str(str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v,
                                      where.at(key).at(i))) for i, v in enumerate(values))

        onnx, io_dtype = obj.get("onnx"), obj.get("io_dtype")
        return cls(ref.file, ref.sha256, ref.size_bytes,
                   read_str(field(obj, "precision", where), where.at("precision"), choices=PRECISIONS),
                   read_str(obj.get("target", "tensorrt"), where.at("target"), choices=TARGETS),
                   read_str(field(obj, "tensorrt_version", where), where.at("tensorrt_version")),
                   None if onnx is None else read_relpath(onnx, where.at("onnx")),
                   None if io_dtype is None else read_str(io_dtype, where.at("io_dtype"), choices=DTYPES),
                   strings("compute_capabilities"), strings("aot_targets"),
                   read_object(obj.get("profile") or {}, where.at("profile")),
                   read_bool(obj.get("version_compatible", False), where.at("version_compatible")),
                   read_bool(obj.get("hardware_compatible", False), where.at("hardware_compatible")), extra(obj, cls.KNOWN))

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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**super().to_json(), "precision": self.precision, "target": self.target}
        if self.onnx is not None:
            out["onnx"] = self.onnx
        out["tensorrt_version"] = self.tensorrt_version
        if self.io_dtype is not None:
            out["io_dtype"] = self.io_dtype
        if self.aot_targets:
            out["aot_targets"] = list(self.aot_targets)
        out.update(compute_capabilities=list(self.compute_capabilities), profile=self.profile,
                   version_compatible=self.version_compatible, hardware_compatible=self.hardware_compatible)
        return {**out, **self.extra}


@dataclass(frozen=True)
class LogEntry(FileRef):
    """The export's log (``logs``: ``export.log``, third-party output of the run) with its SHA-256."""

    extra: dict[str, Any] = dc_field(default_factory=dict)  # "content": what the log holds

    KNOWN = ("file", "sha256", "size_bytes")

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "LogEntry":
        obj = read_object(obj, where)
        ref = FileRef.from_json(obj, where)
        return cls(ref.file, ref.sha256, ref.size_bytes, extra(obj, cls.KNOWN))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), **self.extra}


@dataclass(frozen=True)
class CheckpointFiles:
    """``checkpoint``: a Hugging Face checkpoint directory written with the artifacts (a few-shot export's fitted
    classifier), every file with its SHA-256."""

    directory: str
    files: tuple[FileRef, ...]

    @classmethod
    def from_json(cls, obj: Any, where: Where) -> "CheckpointFiles":
        obj = read_object(obj, where)
        files = read_list(field(obj, "files", where), where.at("files"), nonempty=True)
        return cls(read_relpath(field(obj, "directory", where), where.at("directory")),
                   tuple(FileRef.from_json(read_object(f, where.at("files").at(i)), where.at("files").at(i))
                         for i, f in enumerate(files)))

    def to_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "files": [f.to_json() for f in self.files]}


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
