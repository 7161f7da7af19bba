"""manifest.json: the single source of truth of an artifacts directory.

One typed definition, on the runtime side because the runtime must load a manifest without torch:
:class:`Manifest` holds the entries of :mod:`.manifest_entries`, and the export writes it through
the same types. Loading validates every field (type, range, finiteness, and that the preprocess
block fits the model's input) and refuses an unknown ``schema_version``; a bad field is an
:class:`InputError` naming the manifest file and the JSON path (exit 2, never a traceback).

Every file the manifest names, anywhere, is listed by :meth:`Manifest.files` with its SHA-256;
``vitmsn inspect --verify`` checks them all (:meth:`Manifest.check_files`) and the loaders check
what they load (:meth:`Manifest.verify_file`). Paths are relative and stay inside the directory,
symbolic links included. Writes are atomic (temp file in the same directory, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field as dc_field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from vitmsn.errors import InputError

from .manifest_entries import (FLAVOURS, PRECISIONS, BatchSpec, CalibrationRecord, CheckpointFiles, EngineEntry, FileRef,
                               FlavourEntry, LogEntry, ModelInfo, PrecisionEntry, PreprocessSpec, ReportFile, TensorSpec,
                               reports_from_json, reports_to_json)
from .manifest_fields import Where, field, inside, read_bool, read_int, read_list, read_object, read_str

__all__ = ["SCHEMA_VERSION", "MANIFEST_NAME", "PRECISIONS", "FLAVOURS", "Manifest", "NamedFile", "FileCheck",
           "BatchSpec", "CalibrationRecord", "CheckpointFiles", "EngineEntry", "FileRef", "FlavourEntry", "LogEntry",
           "ModelInfo", "PrecisionEntry",
           "PreprocessSpec", "ReportFile", "TensorSpec", "Where", "sha256_file", "atomic_path", "write_bytes_atomic",
           "write_json_atomic", "resolve_inside"]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes; refuse to read a huge file into memory


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 16) -> str:
    # 64 KiB reads stay below glibc's mmap threshold (128 KiB). 1 MiB reads are mmapped and freed,
    # which raises that threshold for the rest of the process and cost the runtime +30..76 MB of
    # peak RSS when ONNX Runtime loaded a ViT-S right after verifying it (measured, 85 MB model).
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is fsynced and renamed onto ``final``.

    On any exception the temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts are ordinary files
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


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


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json bound to its artifacts directory."""

    root: Path
    model: ModelInfo
    preprocess: PreprocessSpec
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: BatchSpec
    precisions: dict[str, PrecisionEntry]
    engines: tuple[EngineEntry, ...] = ()
    labels: dict[int, str] = dc_field(default_factory=dict)
    opset: int | None = None
    versions: dict[str, str] = dc_field(default_factory=dict)
    calibration: CalibrationRecord | None = None
    reports: tuple[ReportFile, ...] = ()
    passed: bool | None = None
    logs: LogEntry | None = None  # export.log
    extra: dict[str, Any] = dc_field(default_factory=dict)  # created_utc, notes, total_seconds, drift_validation, ...
    schema_version: int = SCHEMA_VERSION
    checkpoint: CheckpointFiles | None = None  # checkpoint/: the fitted classifier of a few-shot export

    KNOWN = ("schema_version", "model", "preprocess", "labels", "inputs", "outputs", "batch", "opset", "precisions",
             "engines", "versions", "calibration", "reports", "report_sha256", "passed", "logs", "checkpoint")

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
    def from_json(cls, root: str | os.PathLike[str], data: Any) -> "Manifest":
        root = Path(root)
        where = Where(str(root / MANIFEST_NAME))
        if not isinstance(data, dict):
            raise where.error("expected a JSON object at the top level")
        version = data.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
            raise where.at("schema_version").error(
                f"schema_version {version!r} is not supported by this vitmsn (it reads {SCHEMA_VERSION})",
                "use the vitmsn release that wrote it, or re-export with this one")
        inputs = tuple(TensorSpec.from_json(t, where.at("inputs").at(i)) for i, t in
                       enumerate(read_list(field(data, "inputs", where), where.at("inputs"), nonempty=True)))
        outputs = tuple(TensorSpec.from_json(t, where.at("outputs").at(i)) for i, t in
                        enumerate(read_list(field(data, "outputs", where), where.at("outputs"), nonempty=True)))
        precisions_obj = read_object(field(data, "precisions", where), where.at("precisions"))
        if not precisions_obj:
            raise where.at("precisions").error("no exported graph is recorded")
        precisions = {}
        for name, entry in precisions_obj.items():
            read_str(name, where.at("precisions"), choices=PRECISIONS)
            precisions[name] = PrecisionEntry.from_json(entry, where.at("precisions").at(name))
        engines = tuple(EngineEntry.from_json(e, where.at("engines").at(i))
                        for i, e in enumerate(read_list(data.get("engines") or [], where.at("engines"))))
        versions = read_object(data.get("versions") or {}, where.at("versions"))
        calib, opset, passed, logs = data.get("calibration"), data.get("opset"), data.get("passed"), data.get("logs")
        m = cls(root, ModelInfo.from_json(field(data, "model", where), where.at("model")),
                PreprocessSpec.from_json(field(data, "preprocess", where), where.at("preprocess")),
                inputs, outputs, BatchSpec.from_json(field(data, "batch", where), where.at("batch")),
                precisions, engines, _labels(data.get("labels") or {}, where.at("labels")),
                None if opset is None else read_int(opset, where.at("opset"), minimum=1),
                {str(k): str(v) for k, v in versions.items()},
                None if calib is None else CalibrationRecord.from_json(calib, where.at("calibration")),
                reports_from_json(data, where), None if passed is None else read_bool(passed, where.at("passed")),
                None if logs is None else LogEntry.from_json(logs, where.at("logs")),
                {k: v for k, v in data.items() if k not in cls.KNOWN}, version,
                None if data.get("checkpoint") is None else CheckpointFiles.from_json(data["checkpoint"],
                                                                                     where.at("checkpoint")))
        m.check_consistency()
        return m

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
        extra = dict(self.extra)
        head = {"schema_version": self.schema_version}
        if "created_utc" in extra:
            head["created_utc"] = extra.pop("created_utc")
        out: dict[str, Any] = {**head, "model": self.model.to_json(), "preprocess": self.preprocess.to_json(),
                               "labels": {str(k): v for k, v in sorted(self.labels.items())},
                               "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs],
                               "batch": self.batch.to_json()}
        if self.opset is not None:
            out["opset"] = self.opset
        out["precisions"] = {k: v.to_json() for k, v in self.precisions.items()}
        out["engines"] = [e.to_json() for e in self.engines]
        out["versions"] = dict(self.versions)
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_json()
        out.update(extra)
        out.update(reports_to_json(self.reports))
        if self.passed is not None:
            out["passed"] = self.passed
        if self.logs is not None:
            out["logs"] = self.logs.to_json()
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint.to_json()
        return out

    def save(self) -> None:
        """Write manifest.json atomically, after checking the JSON reads back as this manifest."""
        data = self.to_json()
        Manifest.from_json(self.root, json.loads(json.dumps(data)))
        write_json_atomic(self.path, data)
