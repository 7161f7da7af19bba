"""manifest.json: the single source of truth of an artifacts directory.

Reading and writing live here, on the runtime side, because the runtime must load a manifest
without torch. Every file the manifest names is a path relative to the artifacts directory,
never outside it, with its SHA-256. Writes are atomic (temp file in the same directory, fsync,
rename), so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from vitmsn.errors import InputError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # bf16: OpenVINO BF16 inference of model.fp32.onnx


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
    """``root / relative``, refusing absolute paths and paths that escape ``root``."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InputError(f"{root / MANIFEST_NAME}: file path {relative!r} must be relative and inside the directory")
    return root / Path(*rel.parts)


class Manifest:
    """A parsed manifest.json bound to its artifacts directory."""

    def __init__(self, root: str | os.PathLike[str], data: dict[str, Any]) -> None:
        self.root = Path(root)
        self.data = data

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise InputError(f"{root}: not an artifacts directory (it does not exist); run vitmsn-export --out {root} first")
        if not path.is_file():
            raise InputError(f"{path}: missing; {root} is not an artifacts directory written by vitmsn-export")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable JSON ({exc}); re-run vitmsn-export to rewrite it") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object at the top level")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(
                f"{path}: schema_version {version!r} is not supported by this vitmsn (expects {SCHEMA_VERSION}); "
                "re-export with this version"
            )
        for key in ("model", "preprocess", "inputs", "outputs", "batch", "precisions"):
            if key not in data:
                raise InputError(f"{path}: required key {key!r} is missing")
        return cls(root, data)

    # ---- accessors -----------------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self.data["model"]["task"])

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in (self.data.get("labels") or {}).items()}

    @property
    def preprocess(self) -> dict[str, Any]:
        return dict(self.data["preprocess"])

    @property
    def input_name(self) -> str:
        return str(self.data["inputs"][0]["name"])

    @property
    def input_shape(self) -> list[int | str]:
        return list(self.data["inputs"][0]["shape"])

    @property
    def output_names(self) -> list[str]:
        return [str(o["name"]) for o in self.data["outputs"]]

    @property
    def batch(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.data["batch"].items()}

    @property
    def precisions(self) -> dict[str, dict[str, Any]]:
        return dict(self.data.get("precisions") or {})

    @property
    def engines(self) -> list[dict[str, Any]]:
        return list(self.data.get("engines") or [])

    def path_of(self, relative: str) -> Path:
        return resolve_inside(self.root, relative)

    def onnx_path(self, precision: str) -> Path:
        entry = self.precisions.get(precision)
        if entry is None:
            have = ", ".join(sorted(self.precisions)) or "none"
            raise InputError(f"{self.root}: no {precision} model in the manifest (it has: {have})")
        return self.path_of(entry["file"])

    def verify_file(self, relative: str, expected_sha256: str) -> Path:
        """The file's path, after checking it exists and matches the recorded SHA-256."""
        path = self.path_of(relative)
        if not path.is_file():
            raise InputError(f"{path}: named in {self.root / MANIFEST_NAME} but missing; re-run vitmsn-export")
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise InputError(
                f"{path}: SHA-256 {actual[:12]}... does not match the manifest ({expected_sha256[:12]}...); "
                "the file was changed or is incomplete, re-run vitmsn-export"
            )
        return path

    # ---- writing -------------------------------------------------------------------------
    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST_NAME, self.data)
