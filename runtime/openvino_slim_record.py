"""What a slim of OpenVINO is recorded as: ``vitmsn-slim.json`` in the package directory (what was removed,
when, by which vitmsn, how to undo it), listed in openvino's pip RECORD so that ``pip uninstall`` or a
reinstall removes it with the package. See :mod:`.openvino_slim` for the tool itself."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vitmsn import __version__

from .manifest import write_bytes_atomic, write_json_atomic

RECORD = "vitmsn-slim.json"


@dataclass(frozen=True)
class Removal:
    path: str  # relative to the package dir, POSIX
    bytes: int
    why: str


@dataclass(frozen=True)
class SlimRecord:
    """``vitmsn-slim.json`` in the package directory: what was removed, when, by whom, how to undo it."""

    openvino: str
    when: str
    bytes_removed: int
    removed: tuple[Removal, ...]
    restore: str
    vitmsn: str = __version__
    tool: str = "python -m vitmsn.runtime.openvino_slim"
    kept_for: str = "vitmsn's CPU runner: core, TBB/hwloc, CPU plugin, ONNX and IR frontends, Python bindings"

    @classmethod
    def load(cls, package: Path) -> "SlimRecord | None":
        try:
            data = json.loads((package / RECORD).read_text())
            record = cls(**{**data, "removed": tuple(Removal(**r) for r in data["removed"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None  # absent or not ours: the plan alone decides what is left to do
        texts = [record.openvino, record.when, record.restore, record.vitmsn] + [r.path for r in record.removed]
        sizes = [record.bytes_removed] + [r.bytes for r in record.removed]
        ok = all(isinstance(t, str) for t in texts) and all(type(n) is int for n in sizes)
        return record if ok else None  # a field of the wrong type: not ours either

    def write(self, package: Path) -> Path:
        write_json_atomic(package / RECORD, asdict(self))
        return package / RECORD


def dist_info(package: Path) -> Path | None:
    """The ``openvino-*.dist-info`` beside the package, if pip installed it."""
    return next(iter(sorted(package.parent.glob(f"{package.name}-*.dist-info"))), None)


def openvino_version(package: Path) -> str:
    info = dist_info(package)
    metadata = info / "METADATA" if info else None
    for line in metadata.read_text(errors="replace").splitlines() if metadata and metadata.exists() else []:
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def register_record(package: Path) -> None:
    """List the record file in openvino's RECORD, so ``pip uninstall`` (and a reinstall) removes it too."""
    info = dist_info(package)
    record_csv = info / "RECORD" if info else None
    if record_csv is None or not record_csv.exists():
        return
    line = f"{package.name}/{RECORD},,"
    text = record_csv.read_text()
    if line not in text.splitlines():  # a new file, renamed over: never half-written
        write_bytes_atomic(record_csv, (text + ("" if text.endswith("\n") or not text else "\n") + line + "\n").encode())


def restore_command(package: Path) -> str:
    version = openvino_version(package)
    return f"pip install --force-reinstall --no-deps openvino{'==' + version if version else ''}"
