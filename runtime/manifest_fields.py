"""Checked reads of manifest.json values: each names the manifest file and the JSON path it read.

A :class:`Where` is the position of a value (``/a/manifest.json`` and ``precisions.int8.file``);
every ``read_*`` helper returns the value in its Python type or raises :class:`InputError` naming
that position, what was found and what to do. The entry types in :mod:`.manifest_entries` are built
from these helpers only, so no malformed value reaches the runtime as a ``KeyError`` or a NaN.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from vitmsn.errors import InputError

FIX = "fix or restore the file, or re-run vitmsn-export to rewrite the artifacts"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MISSING = object()


@dataclass(frozen=True)
class Where:
    """A value's position: the manifest file and a JSON path such as ``precisions.int8.file``."""

    manifest: str = "manifest.json"
    path: str = ""

    def at(self, key: str | int) -> "Where":
        if isinstance(key, int):
            return Where(self.manifest, f"{self.path}[{key}]")
        return Where(self.manifest, f"{self.path}.{key}" if self.path else str(key))

    def error(self, problem: str, fix: str = FIX) -> InputError:
        field = f" {self.path}:" if self.path else ""
        return InputError(f"{self.manifest}:{field} {problem}; {fix}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_object(value: Any, where: Where) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(f"expected a JSON object, found {_show(value)}")
    return value


def field(obj: Mapping[str, Any], key: str, where: Where, default: Any = _MISSING) -> Any:
    if key in obj and obj[key] is not None:
        return obj[key]
    if default is not _MISSING:
        return default
    found = "null" if key in obj else "missing"
    raise where.at(key).error(f"required field is {found}")


def read_str(value: Any, where: Where, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected a non-empty string, found {_show(value)}")
    if choices is not None and value not in choices:
        raise where.error(f"{value!r} is not one of {', '.join(choices)}")
    return value


def read_bool(value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, found {_show(value)}")
    return value


def read_int(value: Any, where: Where, *, minimum: int | None = None, maximum: int | None = None) -> int:
    # bool is an int subclass in Python; "3" and 3.0 are not integers in a JSON contract
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"expected an integer, found {_show(value)}")
    if minimum is not None and value < minimum:
        raise where.error(f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise where.error(f"{value} is above the maximum {maximum}")
    return value


def read_float(value: Any, where: Where, *, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"expected a number, found {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise where.error(f"{value} is not a finite number")
    if minimum is not None and number < minimum:
        raise where.error(f"{value!r} is below the minimum {minimum:g}")
    if maximum is not None and number > maximum:
        raise where.error(f"{value!r} is above the maximum {maximum:g}")
    return number


def read_list(value: Any, where: Where, *, length: int | None = None, nonempty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise where.error(f"expected a JSON list, found {_show(value)}")
    if length is not None and len(value) != length:
        raise where.error(f"expected {length} values, found {len(value)}")
    if nonempty and not value:
        raise where.error("expected at least one entry, found an empty list")
    return value


def read_sha256(value: Any, where: Where) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise where.error(f"expected a SHA-256 (64 lowercase hex digits), found {_show(value)}")
    return value


def read_relpath(value: Any, where: Where) -> str:
    """A file name relative to the artifacts directory: no absolute path, no ``..``, no backslash."""
    text = read_str(value, where)
    rel = PurePosixPath(text)
    if rel.is_absolute() or "\\" in text or ".." in rel.parts or not rel.parts or text.startswith("~"):
        raise where.error(f"file path {text!r} must be relative and stay inside the artifacts directory")
    return str(rel)


def inside(root: Path, relative: str, where: Where) -> Path:
    """``root / relative`` after checking that it resolves (symbolic links followed) inside ``root``."""
    relative = read_relpath(relative, where)
    path = root / Path(*PurePosixPath(relative).parts)
    real_root = root.resolve()
    try:
        path.resolve().relative_to(real_root)
    except ValueError:
        raise where.error(f"{relative!r} resolves to {path.resolve()}, outside {real_root} (a symbolic link out of "
                          "the artifacts directory is refused)") from None
    return path


def extra(obj: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The fields a type does not model, kept as they are so that writing round-trips the JSON."""
    return {k: v for k, v in obj.items() if k not in known}


def label_control_character(label: str) -> str | None:
    """The first control character, line or paragraph separator in ``label`` (Unicode Cc, Zl, Zp: ``\\n``,
    ``\\r``, U+2028, ...), escaped (``'\\\\n'``, ``'\\\\u2028'``); None for a label that fits on one line."""
    import unicodedata

    for ch in label:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return ch.encode("unicode_escape").decode("ascii")
    return None
