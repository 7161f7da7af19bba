"""The config file: ``vitmsn.toml`` in the working directory, else ``[tool.vitmsn]`` in its
pyproject.toml, so that a CI pipeline can run just ``vitmsn-export --precision fp16``.

Keys are the long option names of ``vitmsn-export`` (``model``, ``out``, ``precision``,
``calib-images``, ``batch``, ...; dashes or underscores). A sub-table per ``vitmsn`` command
(``[tool.vitmsn.validate]``, ...) holds that command's options. Command-line flags win over the
file. Unknown keys are an error that names the file and the key, so a typo never goes unnoticed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from vitmsn.errors import InputError

SUBCOMMANDS = ("predict", "validate", "bench", "inspect", "triton", "serve")


def find_config(cwd: Path) -> tuple[Path, dict[str, Any]] | None:
    """The config table and the file it came from, or None when there is none."""
    own = cwd / "vitmsn.toml"
    if own.is_file():
        data = _read(own)
        table = data.get("tool", {}).get("vitmsn", data.get("vitmsn", data))
        return own, table
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        table = _read(pyproject).get("tool", {}).get("vitmsn")
        if table is not None:
            return pyproject, table
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc


def default_map(cwd: Path, params: dict[str, set[str]]) -> dict[str, Any]:
    """Click ``default_map`` for a command from the config file.

    ``params`` maps a command name ("" for vitmsn-export) to its parameter names.
    """
    found = find_config(cwd)
    if found is None:
        return {}
    path, table = found
    if not isinstance(table, dict):
        raise InputError(f"{path}: the vitmsn config must be a table")

    def convert(values: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in allowed:
                raise InputError(f"{path}: unknown key {key!r} in {where}; allowed: {', '.join(sorted(k.replace('_', '-') for k in allowed))}")
            out[name] = value
        return out

    result: dict[str, Any] = {}
    top = {k: v for k, v in table.items() if not (k in SUBCOMMANDS and isinstance(v, dict))}
    if "" in params:
        result.update(convert(top, params[""], "[tool.vitmsn]"))
    for sub in SUBCOMMANDS:
        if sub in table and isinstance(table[sub], dict) and sub in params:
            result[sub] = convert(table[sub], params[sub], f"[tool.vitmsn.{sub}]")
    return result
