"""The config file: the nearest ``vitmsn.toml``, or ``pyproject.toml`` with a ``[tool.vitmsn]``
table, going up from the working directory (as pytest and ruff find theirs), so that a CI
pipeline can run just ``vitmsn-export --precision fp16`` from anywhere in its repository.

Keys are the long option names of ``vitmsn-export`` (``model``, ``out``, ``precision``,
``calib-images``, ``batch``, ...; dashes or underscores). A sub-table per ``vitmsn`` command
(``[tool.vitmsn.validate]``, ...) holds that command's options; every ``vitmsn`` command takes
its ARTIFACTS directory from the top-level ``out`` when none is given. Relative paths in the
file are relative to the file's directory, wherever the command runs. Command-line flags win
over the file. Unknown keys, and values of the wrong type, are errors naming the file, the key,
the type found and the type expected.

Standard library only: the commands describe their options as :class:`Key` (see
:func:`vitmsn.cli.options.config_keys`), so this module never imports click.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitmsn.core.errors import InputError

SUBCOMMANDS = ("predict", "validate", "bench", "inspect", "triton", "serve", "cache")
# Keys whose values are paths: resolved against the config file's directory.
PATH_KEYS = {"out", "calib_images", "validate_images", "calib_cache", "timing_cache", "images", "labels",
             "repo", "checkpoint", "json_path", "md_path", "artifacts", "json", "markdown"}
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true or false)",
              dict: "a table", list: "a list"}


@dataclass(frozen=True)
class Key:
    """One config key of a command: the parameter it sets and the TOML types it accepts (None: any);
    ``multiple``: a list of those, or one of them."""

    param: str
    types: tuple[type, ...] | None = None
    multiple: bool = False


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    table: dict[str, Any]

    @property
    def base(self) -> Path:
        return self.path.parent


@dataclass(frozen=True)
class Defaults:
    """What a command takes from the config file: click's ``default_map`` and the file it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def describe(self) -> str | None:
        return None if self.path is None else f"config: {self.path}"


def type_name(value: Any) -> str:
    for kind in (bool, int, float, str, dict, list):
        if isinstance(value, kind):
            return TYPE_NAMES[kind]
    return type(value).__name__  # TOML dates and times


def check_type(path: Path, key: str, value: Any, types: tuple[type, ...], multiple: bool = False) -> Any:
    """``value`` when it is one of ``types`` (a list of them when ``multiple``; one is taken as a list of
    one), else InputError naming the file, the key, the type found and the type expected."""
    def fits(v: Any) -> bool:
        if isinstance(v, bool):
            return bool in types
        return isinstance(v, types) or (float in types and isinstance(v, int))

    if multiple and isinstance(value, list):
        if all(fits(v) for v in value):
            return value
        bad = next(v for v in value if not fits(v))
        raise InputError(f"{path}: key {key!r} holds {type_name(bad)} ({bad!r}); expected a list of "
                         f"{' or '.join(TYPE_NAMES[t].split(' ', 1)[1] + 's' for t in types)}")
    if fits(value):
        return [value] if multiple else value
    expected = " or ".join(TYPE_NAMES[t] for t in types) + (" (or a list of them)" if multiple else "")
    shown = f" ({value!r})" if isinstance(value, (bool, int, float, str)) else ""
    raise InputError(f"{path}: key {key!r} is {type_name(value)}{shown}; expected {expected}")


def find_config(cwd: Path) -> ConfigFile | None:
    """The nearest config file at or above ``cwd``, or None. In one directory ``vitmsn.toml`` wins
    over ``pyproject.toml``; a pyproject.toml without ``[tool.vitmsn]`` is passed over."""
    start = cwd.resolve()
    for directory in [start, *start.parents]:
        own = directory / "vitmsn.toml"
        if own.is_file():
            data = _read(own)
            tool = check_type(own, "tool", data.get("tool", {}), (dict,))
            if "vitmsn" in tool:
                return ConfigFile(own.resolve(), check_type(own, "tool.vitmsn", tool["vitmsn"], (dict,)))
            if isinstance(data.get("vitmsn"), dict):
                return ConfigFile(own.resolve(), data["vitmsn"])
            return ConfigFile(own.resolve(), data)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            data = _read(pyproject)
            tool = check_type(pyproject, "tool", data.get("tool", {}), (dict,))
            if "vitmsn" in tool:
                return ConfigFile(pyproject.resolve(), check_type(pyproject, "tool.vitmsn", tool["vitmsn"], (dict,)))
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc


def _resolve(base: Path, name: str, value: Any) -> Any:
    if name in PATH_KEYS and isinstance(value, str) and value:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    if name == "model" and isinstance(value, str) and value and not Path(value).is_absolute():
        local = base / value  # a checkpoint directory beside the config file; hub ids and 'demo' stay as written
        if local.exists() or value.startswith((".", "~")) or value.count("/") > 1 or (base / value.split("/")[0]).exists():
            return str(local)  # a path: a missing one then says "no such directory" with the full path
    return value


def _keys(given: set[str] | dict[str, Key]) -> dict[str, Key]:
    return given if isinstance(given, dict) else {name: Key(name) for name in given}


def load_defaults(cwd: Path, params: dict[str, set[str] | dict[str, Key]]) -> Defaults:
    """Click ``default_map`` for a command from the nearest config file.

    ``params`` maps a command name ("" for vitmsn-export) to its config keys (underscored long option
    names, each a :class:`Key`; a plain set of parameter names checks no types). A ``vitmsn`` command
    with an ``artifacts`` parameter gets the top-level ``out`` as its default.
    """
    found = find_config(cwd)
    if found is None:
        return Defaults()
    path, table = found.path, found.table

    def convert(values: dict[str, Any], allowed: dict[str, Key], where: str) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            spec = allowed.get(key.replace("-", "_"))
            if spec is None:
                raise InputError(f"{path}: unknown key {key!r} in {where}; allowed: "
                                 f"{', '.join(sorted(k.replace('_', '-') for k in allowed))}")
            if spec.types is not None:
                dotted = where[1:-1] + "." + key
                value = check_type(path, dotted if path.name == "pyproject.toml" else dotted.split(".", 2)[2],
                                   value, spec.types, spec.multiple)
            out[spec.param] = _resolve(found.base, key.replace("-", "_"), value)
        return out

    top = {k: v for k, v in table.items() if k not in SUBCOMMANDS}
    prefix = "tool.vitmsn." if path.name == "pyproject.toml" else ""
    if "out" in top:
        check_type(path, prefix + "out", top["out"], (str,))
    result: dict[str, Any] = {}
    if "" in params:
        result.update(convert(top, _keys(params[""]), "[tool.vitmsn]"))
    for sub in SUBCOMMANDS:
        if sub not in table:
            continue
        check_type(path, prefix + sub, table[sub], (dict,))  # a sub-table, whichever command runs
    for sub in SUBCOMMANDS:
        if sub not in params:
            continue
        keys = _keys(params[sub])
        values = convert(table.get(sub, {}), keys, f"[tool.vitmsn.{sub}]")
        artifacts = next((k.param for k in keys.values() if k.param == "artifacts"), None)
        if artifacts and artifacts not in values and "out" in top:
            values[artifacts] = _resolve(found.base, "out", top["out"])
        if values:
            result[sub] = values
    return Defaults(result, path)
