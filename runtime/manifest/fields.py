"""manifest.json's schema machinery: checked reads, and one loader and writer for every entry type.

A :class:`Where` is the position of a value (``/a/manifest.json`` and ``precisions.int8.file``);
every ``read_*`` helper returns the value in its Python type or raises :class:`InputError` naming
that position, what was found and what to do. Each entry type (:mod:`.entries`) is a frozen dataclass
whose fields say, with :func:`json_field`, which JSON key they hold and how to read it; :func:`load`
and :func:`dump` read and write every type from that one description. Unknown keys stay in the
type's ``extra`` field and are written back, so the JSON can grow without a reader losing anything.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from vitmsn.core.errors import InputError

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


def label_control_character(label: str) -> str | None:
    """The first control character, line or paragraph separator in ``label`` (Unicode Cc, Zl, Zp: ``\\n``,
    ``\\r``, U+2028, ...), escaped (``'\\\\n'``, ``'\\\\u2028'``); None for a label that fits on one line."""
    import unicodedata

    for ch in label:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return ch.encode("unicode_escape").decode("ascii")
    return None


# ---- the declarative part ------------------------------------------------------------------------
Reader = Callable[[Any, Where], Any]
E = TypeVar("E", bound="Entry")


def is_none(value: Any) -> bool:
    return value is None


@dataclass(frozen=True)
class Rule:
    """How a dataclass field maps to JSON: its key (``size.height`` reaches into an object), the reader
    that checks and converts the value, whether it must be present, and when the writer leaves it out."""

    read: Reader
    key: str | None = None  # None: the field's name
    aliases: tuple[str, ...] = ()  # older keys read when ``key`` is absent
    required: bool = False
    omit: Callable[[Any], bool] = is_none  # the writer leaves the key out when this says so
    write: Callable[[Any], Any] | None = None  # the value as JSON; None: :func:`plain`


def json_field(read: Reader, *, key: str | None = None, aliases: tuple[str, ...] = (), required: bool | None = None,
               omit: Callable[[Any], bool] = is_none, write: Callable[[Any], Any] | None = None, **default: Any) -> Any:
    """A dataclass field read and written through ``read``; required unless a default is given (or ``required``)."""
    rule = Rule(read, key, aliases, not default if required is None else required, omit, write)
    return dataclasses.field(metadata={"json": rule}, **default)


def _key(f: dataclasses.Field[Any]) -> str:
    return f.metadata["json"].key or f.name


def _lookup(obj: Mapping[str, Any], rule: Rule, key: str, where: Where) -> tuple[Any, Where]:
    *parents, last = key.split(".")
    for part in parents:
        obj = read_object(field(obj, part, where), where.at(part))
        where = where.at(part)
    for name in (last, *rule.aliases):
        if obj.get(name) is not None:
            return obj[name], where.at(name)
    if rule.required:
        field(obj, last, where)  # raises, naming the field
    return _MISSING, where.at(last)


def load(cls: type[E], obj: Any, where: Where, *, known: tuple[str, ...] = (), **given: Any) -> E:
    """``cls`` read from the JSON object ``obj``; ``given`` fields are not read, ``known`` keys are
    consumed elsewhere (neither is kept in ``extra``)."""
    obj = read_object(obj, where)
    values = dict(given)
    keys = set(known)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        rule = f.metadata.get("json")
        if rule is None or f.name in given:
            continue
        key = _key(f)
        keys.update((key.split(".")[0], *rule.aliases))
        value, at = _lookup(obj, rule, key, where)
        if value is not _MISSING:
            values[f.name] = rule.read(value, at)
    if "extra" in {f.name for f in dataclasses.fields(cls)} and "extra" not in given:  # type: ignore[arg-type]
        values["extra"] = {k: v for k, v in obj.items() if k not in keys}
    entry = cls(**values)
    entry.check(where)
    return entry


def plain(value: Any) -> Any:
    """A field's value as JSON: entries through their ``to_json``, tuples as lists."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def dump(entry: "Entry") -> dict[str, Any]:
    """The JSON object of ``entry``, keys in its ``JSON_ORDER`` (``*``: everything not named there)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(entry):  # type: ignore[arg-type]
        rule = f.metadata.get("json")
        value = getattr(entry, f.name)
        if rule is None or rule.omit(value):
            continue
        *parents, last = _key(f).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = (rule.write or plain)(value)
    out.update(getattr(entry, "extra", {}))
    order = entry.JSON_ORDER or tuple(out)
    rest = [k for k in out if k not in order]
    keys = [k for slot in order for k in (rest if slot == "*" else [slot]) if k in out]
    return {k: out[k] for k in keys + [k for k in rest if "*" not in order]}


class Entry:
    """Base of every manifest entry type: ``from_json``/``to_json`` from its fields' :func:`json_field`."""

    JSON_ORDER: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls: type[E], obj: Any, where: Where = Where()) -> E:
        return load(cls, obj, where)

    def to_json(self) -> dict[str, Any]:
        return dump(self)

    def check(self, where: Where) -> None:
        """What no single field can check (e.g. ``min <= opt <= max``); raises ``where.error(...)``."""


# ---- readers, for json_field ----------------------------------------------------------------------
def text(choices: tuple[str, ...] | None = None) -> Reader:
    return lambda v, w: read_str(v, w, choices=choices)


def integer(minimum: int | None = None, maximum: int | None = None) -> Reader:
    return lambda v, w: read_int(v, w, minimum=minimum, maximum=maximum)


def number(minimum: float | None = None, maximum: float | None = None) -> Reader:
    return lambda v, w: read_float(v, w, minimum=minimum, maximum=maximum)


def listing(item: Reader, *, length: int | None = None, nonempty: bool = False) -> Reader:
    return lambda v, w: tuple(item(x, w.at(i)) for i, x in enumerate(read_list(v, w, length=length, nonempty=nonempty)))


def entry(cls: type[Entry]) -> Reader:
    return cls.from_json


def obj(v: Any, w: Where) -> dict[str, Any]:
    return dict(read_object(v, w))
