"""manifest.json: the single source of truth of an artifacts directory.

One typed definition, on the runtime side because the runtime must load a manifest without torch:
:class:`Manifest` holds the entries of :mod:`.entries` (declared once, read and written by :mod:`.fields`), and the export writes it through
the same types. Loading validates every field (type, range, finiteness, and that the preprocess
block fits the model's input) and refuses an unknown ``schema_version``; a bad field is an
:class:`InputError` naming the manifest file and the JSON path (exit 2, never a traceback).

Every file the manifest names, anywhere, is listed by :meth:`Manifest.files` with its SHA-256;
``vitmsn inspect --verify`` checks them all (:meth:`Manifest.check_files`) and the loaders check
what they load (:meth:`Manifest.verify_file`). Paths are relative and stay inside the directory,
symbolic links included. Writes are atomic (:mod:`.atomic`: temp file in the same directory, fsync, rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field as dc_field, replace
from pathlib import Path
from typing import Any, Mapping

from vitmsn.core.errors import InputError

from .atomic import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic
from .entries import (FLAVOURS, PRECISIONS, TARGETS, VERDICTS, BatchSpec, CalibrationRecord, CheckpointFiles, EngineEntry,
                      FileRef, FlavourEntry, LogEntry, ModelInfo, PrecisionEntry, PreprocessSpec, ReportFile, TensorSpec, VerdictRecord,
                      reports_from_json, reports_to_json)
from .fields import Entry, Where, dump, entry, inside, integer, json_field, listing, load, read_bool, read_object, read_str, text

__all__ = ["SCHEMA_VERSION", "MANIFEST_NAME", "PRECISIONS", "TARGETS", "FLAVOURS", "Manifest", "NamedFile", "FileCheck",
           "BatchSpec", "CalibrationRecord", "CheckpointFiles", "EngineEntry", "FileRef", "FlavourEntry", "LogEntry", "ModelInfo",
           "PrecisionEntry",
           "PreprocessSpec", "ReportFile", "TensorSpec", "Where", "sha256_file", "atomic_path", "write_bytes_atomic",
           "write_json_atomic", "resolve_inside"]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes; refuse to read a huge file into memory


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symbolic links that leave ``root``."""
    return inside(Path(root), relative, Where(str(Path(root) / MANIFEST_NAME), "file"))


@dataclass(frozen=True)
class NamedFile:
    """A file the manifest names: where (JSON path), its relative name and recorded SHA-256."""

    role: str  # e.g. "precisions.int8.onnxruntime_cpu"
    file: str
    sha256: str | None  # None: an older manifest recorded no hash (reports only)


@dataclass(frozen=True)
class FileCheck:
    named: NamedFile
    status: str  # "ok", "missing", "corrupt", "swapped", "outside", "unhashed"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unhashed")


def _labels(obj: Any, where: Where) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, value in read_object(obj, where).items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and (key == "0" or not key.startswith("0"))):
            raise where.error(f"label key {key!r} is not a non-negative integer (keys are class indices '0', '1', ...)")
        out[int(key)] = read_str(value, where.at(key))
    if out and sorted(out) != list(range(len(out))):
        missing = sorted(set(range(max(out) + 1)) - set(out))[:5]
        raise where.error(f"label indices are not contiguous from 0 (missing {missing})")
    return out


def _precisions(obj: Any, where: Where) -> dict[str, PrecisionEntry]:
    if not read_object(obj, where):
        raise where.error("no exported graph is recorded")
    return {read_str(name, where, choices=PRECISIONS): PrecisionEntry.from_json(e, where.at(name)) for name, e in obj.items()}


def _tensors() -> Any:
    return json_field(listing(entry(TensorSpec), nonempty=True))


@dataclass(frozen=True)
class Manifest(Entry):
    """A validated manifest.json bound to its artifacts directory."""

    root: Path
    model: ModelInfo = json_field(entry(ModelInfo))
    preprocess: PreprocessSpec = json_field(entry(PreprocessSpec))
    inputs: tuple[TensorSpec, ...] = _tensors()
    outputs: tuple[TensorSpec, ...] = _tensors()
    batch: BatchSpec = json_field(entry(BatchSpec))
    precisions: dict[str, PrecisionEntry] = json_field(_precisions)
    engines: tuple[EngineEntry, ...] = json_field(listing(entry(EngineEntry)), default=())
    labels: dict[int, str] = json_field(_labels, default_factory=dict,
                                        write=lambda labels: {str(k): v for k, v in sorted(labels.items())})
    opset: int | None = json_field(integer(1), default=None)
    versions: dict[str, str] = json_field(lambda v, w: {str(k): str(x) for k, x in read_object(v, w).items()},
                                          default_factory=dict)
    calibration: CalibrationRecord | None = json_field(entry(CalibrationRecord), default=None)
    reports: tuple[ReportFile, ...] = ()  # "reports" and "report_sha256" (reports_from_json)
    passed: bool | None = json_field(read_bool, default=None)
    logs: LogEntry | None = json_field(entry(LogEntry), default=None)  # export.log
    # the latest verdict per precision/backend/flavour (.verdicts), and the word over everything that ships
    verdicts: tuple[VerdictRecord, ...] = json_field(listing(entry(VerdictRecord)), default=(), omit=lambda v: not v)
    verdict: str | None = json_field(text(VERDICTS), default=None)
    checkpoint: CheckpointFiles | None = json_field(entry(CheckpointFiles), default=None)  # a few-shot export's classifier
    extra: dict[str, Any] = dc_field(default_factory=dict)  # created_utc, notes, total_seconds, drift_validation, ...
    schema_version: int = json_field(integer(), default=SCHEMA_VERSION)

    JSON_ORDER = ("schema_version", "created_utc", "model", "preprocess", "labels", "inputs", "outputs", "batch", "opset",
                  "precisions", "engines", "versions", "calibration", "*", "reports", "report_sha256", "passed", "verdict",
                  "verdicts", "logs", "checkpoint")

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise InputError(f"{root}: not an artifacts directory (it does not exist); run vitmsn-export --out {root} first")
        if not path.is_file():
            raise InputError(f"{path}: missing; {root} is not an artifacts directory written by vitmsn-export")
        inside(root, MANIFEST_NAME, Where(str(path)))
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise InputError(f"{path}: {path.stat().st_size} bytes, far beyond any manifest "
                                 f"({MAX_MANIFEST_BYTES >> 20} MiB at most); re-run vitmsn-export")
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"{path}: unreadable JSON ({exc}); re-run vitmsn-export to rewrite it") from exc
        return cls.from_json(root, data)

    @classmethod
    def from_json(cls, root: str | os.PathLike[str], data: Any) -> "Manifest":  # type: ignore[override]
        root = Path(root)
        where = Where(str(root / MANIFEST_NAME))
        if not isinstance(data, dict):
            raise where.error("expected a JSON object at the top level")
        version = data.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
            raise where.at("schema_version").error(
                f"schema_version {version!r} is not supported by this vitmsn (it reads {SCHEMA_VERSION})",
                "use the vitmsn release that wrote it, or re-export with this one")
        return load(cls, data, where, known=("report_sha256", "reports"), root=root, reports=reports_from_json(data, where))

    def check(self, where: Where) -> None:
        self.check_consistency()

    def check_consistency(self) -> None:
        """What no single entry can check: the input is an image batch the preprocess block fills, output
        names are unique, labels match the logits axis. (The export calls it before writing anything.)"""
        where = Where(str(self.path))
        if len(self.inputs) != 1:
            raise where.at("inputs").error(f"expected one image input, found {len(self.inputs)}")
        shape = self.inputs[0].shape
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
            raise where.at("inputs").at(0).at("shape").error(f"{list(shape)} is not an image batch [N, 3, H, W]")
        pre = self.preprocess
        if (pre.height, pre.width) != tuple(shape[2:]):
            raise where.at("preprocess").at("size").error(
                f"{pre.height}x{pre.width} does not fit the model input {list(shape)} (needs {shape[2]}x{shape[3]})")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names) or self.inputs[0].name in names:
            raise where.at("outputs").error(f"tensor names {names} are not unique")
        logits = next((o for o in self.outputs if o.name == "logits"), None)
        if self.model.task == "image-classification":
            if logits is None:
                raise where.at("outputs").error("an image-classification model needs a 'logits' output")
            classes = logits.shape[-1]
            if not isinstance(classes, int):
                raise where.at("outputs").error(f"logits shape {list(logits.shape)}: the class axis must be a number")
            if self.labels and len(self.labels) != classes:
                raise where.at("labels").error(f"{len(self.labels)} labels for {classes} logits (one label per class)")

    # ---- accessors -----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> list[int | str]:
        return list(self.inputs[0].shape)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def data(self) -> dict[str, Any]:
        """The JSON form (what :meth:`save` writes)."""
        return self.to_json()

    def path_of(self, relative: str) -> Path:
        return resolve_inside(self.root, relative)

    def precision(self, name: str) -> PrecisionEntry:
        entry = self.precisions.get(name)
        if entry is None:
            have = ", ".join(sorted(self.precisions)) or "none"
            raise InputError(f"{self.root}: no {name} model in the manifest (it has: {have}); "
                             f"re-run vitmsn-export with --precision {name}")
        return entry

    def onnx_path(self, precision: str) -> Path:
        return self.path_of(self.precision(precision).file)

    # ---- the files it names --------------------------------------------------------------
    def files(self) -> tuple[NamedFile, ...]:
        """Every file this manifest names, anywhere: graphs, CPU flavours, engines, reports, the export log."""
        out: list[NamedFile] = []
        for name, entry in self.precisions.items():
            out.append(NamedFile(f"precisions.{name}", entry.file, entry.sha256))
            out += [NamedFile(f"precisions.{name}.{k}", f.file, f.sha256) for k, f in entry.flavours.items()]
        out += [NamedFile(f"engines[{i}]", e.file, e.sha256) for i, e in enumerate(self.engines)]
        out += [NamedFile(f"reports.{r.kind}", r.file, r.sha256) for r in self.reports]
        if self.logs is not None:
            out.append(NamedFile("logs", self.logs.file, self.logs.sha256))
        if self.checkpoint is not None:
            out += [NamedFile(f"checkpoint.files[{i}]", f.file, f.sha256) for i, f in enumerate(self.checkpoint.files)]
        return tuple(out)

    def check_files(self) -> list[FileCheck]:
        """Every named file checked: present, inside the directory, SHA-256 as recorded (or whose it is)."""
        by_sha: dict[str, str] = {}
        for f in self.files():
            if f.sha256:
                by_sha.setdefault(f.sha256, f.file)
        checks = []
        for f in self.files():
            try:
                path = self.path_of(f.file)
            except InputError as exc:
                checks.append(FileCheck(f, "outside", str(exc)))
                continue
            if not path.is_file():
                checks.append(FileCheck(f, "missing", f"{f.file}: missing"))
                continue
            actual = sha256_file(path)
            if f.sha256 is None:
                checks.append(FileCheck(f, "unhashed", f"{f.file}: present (no SHA-256 recorded)"))
            elif actual == f.sha256:
                checks.append(FileCheck(f, "ok", f"{f.file}: SHA-256 matches"))
            elif actual in by_sha and by_sha[actual] != f.file:
                checks.append(FileCheck(f, "swapped", f"{f.file}: holds the content of {by_sha[actual]}"))
            else:
                checks.append(FileCheck(f, "corrupt", f"{f.file}: SHA-256 {actual[:12]}... does not match the "
                                                      f"manifest ({f.sha256[:12]}...)"))
        return checks

    def unnamed_files(self) -> list[str]:
        """Files in the directory the manifest does not name (CONTRACT: there should be none)."""
        named = {f.file for f in self.files()} | {MANIFEST_NAME}
        return sorted(str(p.relative_to(self.root).as_posix()) for p in self.root.rglob("*")
                      if (p.is_file() or p.is_symlink()) and p.relative_to(self.root).as_posix() not in named)

    def verify_file(self, relative: str, expected_sha256: str) -> Path:
        """The file's path, after checking it is inside the directory, exists and matches ``expected_sha256``."""
        path = self.path_of(relative)
        if not path.is_file():
            raise InputError(f"{path}: named in {self.path} but missing; re-run vitmsn-export")
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise InputError(
                f"{path}: SHA-256 {actual[:12]}... does not match the manifest {self.path} "
                f"({expected_sha256[:12]}...); "
                "the file was changed or is incomplete, re-run vitmsn-export"
            )
        return path

    def verify(self, ref: FileRef) -> Path:
        return self.verify_file(ref.file, ref.sha256)

    # ---- writing -------------------------------------------------------------------------
    def with_reports(self, names: Mapping[str, str]) -> "Manifest":
        """This manifest with ``names`` (kind -> file, written in the directory) recorded with their SHA-256."""
        kept = [r for r in self.reports if r.kind not in names]
        new = [ReportFile(k, v, sha256_file(self.path_of(v))) for k, v in names.items()]
        return replace(self, reports=tuple(kept + new))

    def to_json(self) -> dict[str, Any]:
        return dump(replace(self, extra={**self.extra, **reports_to_json(self.reports)}))

    def save(self) -> None:
        """Write manifest.json atomically, after checking the JSON reads back as this manifest."""
        data = self.to_json()
        Manifest.from_json(self.root, json.loads(json.dumps(data)))
        write_json_atomic(self.path, data)
