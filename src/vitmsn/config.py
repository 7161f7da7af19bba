"""The config file: the nearest ``vitmsn.toml``, or ``pyproject.toml`` with a ``[tool.vitmsn]``
table, going up from the working directory (as pytest and ruff find theirs), so that a CI
pipeline can run just ``vitmsn-export --precision fp16`` from anywhere in its repository.

Keys are the long option names of ``vitmsn-export`` (``model``, ``out``, ``precision``,
``calib-images``, ``batch``, ...; dashes or underscores). A sub-table per ``vitmsn`` command
(``[tool.vitmsn.validate]``, ...) holds that command's options; every ``vitmsn`` command takes
its ARTIFACTS directory from the top-level ``out`` when none is given. Relative paths in the
file are relative to the file's directory, wherever the command runs. Command-line flags win
over the file. Unknown keys are an error that names the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitmsn.core.errors import InputError

SUBCOMMANDS = ("predict", "validate", "bench", "inspect", "triton", "serve")
# Keys whose values are paths: resolved against the config file's directory.
PATH_KEYS = {"out", "calib_images", "validate_images", "calib_cache", "timing_cache", "images", "labels",
             "repo", "checkpoint", "json_path", "md_path", "artifacts"}


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


def find_config(cwd: Path) -> ConfigFile | None:
    """The nearest config file at or above ``cwd``, or None. In one directory ``vitmsn.toml`` wins
    over ``pyproject.toml``; a pyproject.toml without ``[tool.vitmsn]`` is passed over."""
    start = cwd.resolve()
    for directory in [start, *start.parents]:
        own = directory / "vitmsn.toml"
        if own.is_file():
            data = _read(own)
            table = data.get("tool", {}).get("vitmsn", data.get("vitmsn", data))
            return ConfigFile(own.resolve(), table)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            table = _read(pyproject).get("tool", {}).get("vitmsn")
            if table is not None:
                return ConfigFile(pyproject.resolve(), table)
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
        if local.exists():
            return str(local)
    return value


def load_defaults(cwd: Path, params: dict[str, set[str]]) -> Defaults:
    """Click ``default_map`` for a command from the nearest config file.

    ``params`` maps a command name ("" for vitmsn-export) to its parameter names. A ``vitmsn``
    command with an ``artifacts`` parameter gets the top-level ``out`` as its default.
    """
    found = find_config(cwd)
    if found is None:
        return Defaults()
    path, table = found.path, found.table
    if not isinstance(table, dict):
        raise InputError(f"{path}: the vitmsn config must be a table")

    def convert(values: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in allowed:
                raise InputError(f"{path}: unknown key {key!r} in {where}; allowed: {', '.join(sorted(k.replace('_', '-') for k in allowed))}")
            out[name] = _resolve(found.base, name, value)
        return out

    result: dict[str, Any] = {}
    top = {k: v for k, v in table.items() if not (k in SUBCOMMANDS and isinstance(v, dict))}
    if "" in params:
        result.update(convert(top, params[""], "[tool.vitmsn]"))
    for sub in SUBCOMMANDS:
        if sub not in params:
            continue
        values = convert(table[sub], params[sub], f"[tool.vitmsn.{sub}]") if isinstance(table.get(sub), dict) else {}
        if "artifacts" in params[sub] and "artifacts" not in values and isinstance(top.get("out"), str):
            values["artifacts"] = _resolve(found.base, "out", top["out"])
        if values:
            result[sub] = values
    return Defaults(result, path)


def default_map(cwd: Path, params: dict[str, set[str]]) -> dict[str, Any]:
    """:func:`load_defaults` without the file's name."""
    return load_defaults(cwd, params).values
