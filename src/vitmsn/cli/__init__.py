"""The console scripts ``vitmsn`` and ``vitmsn-export``.

This package's ``__init__`` imports nothing outside the standard library, so a runtime-only
install (no click, no torch) gets a one-line install hint instead of a traceback. The click group
lives in :mod:`vitmsn.cli.main_group`, ``vitmsn-export`` in :mod:`vitmsn.cli.export_cmd`.
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    """Entry point of ``vitmsn``."""
    from .extras import require

    require("the 'vitmsn' command", "click")
    from .main_group import main as group_main

    group_main()


def export_main() -> None:
    """Entry point of ``vitmsn-export``."""
    from .extras import require

    require("'vitmsn-export'", "click")
    from vitmsn.core.interrupts import deferred

    with deferred():  # click, torch and ONNX tooling load here: a signal waits until they have (vitmsn.core.interrupts)
        from .export_cmd import main as export_cmd_main

    export_cmd_main()


def __getattr__(name: str) -> Any:  # `from vitmsn.cli import group` without importing click eagerly
    if name == "group":
        from .main_group import group

        return group
    raise AttributeError(name)
