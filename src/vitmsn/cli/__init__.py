"""The console scripts ``vitmsn`` and ``vitmsn-export``.

This package's ``__init__`` imports nothing outside the standard library, so any install profile
(no click, no torch) gets one line naming the extra to install instead of a traceback, and
``--version`` works without click. The click group lives in :mod:`vitmsn.cli.main_group`,
``vitmsn-export`` in :mod:`vitmsn.cli.export_cmd`.
"""

from __future__ import annotations

import sys
from typing import Any


def _version_only(prog: str) -> bool:
    """``prog --version`` answered without click (as click's version_option words it)."""
    if sys.argv[1:] in (["--version"], ["-V"]):
        import vitmsn

        print(f"{prog}, version {vitmsn.__version__}")
        return True
    return False


def main() -> None:
    """Entry point of ``vitmsn``."""
    if _version_only("vitmsn"):
        return
    from .extras import NEEDS, require, require_command

    name = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if name in NEEDS and not {"-h", "--help"} & set(sys.argv[1:]):
        require_command(name)
    require("the 'vitmsn' command", "click")
    from .main_group import main as group_main

    group_main()


def export_main() -> None:
    """Entry point of ``vitmsn-export``."""
    if _version_only("vitmsn-export"):
        return
    from .extras import require_command

    require_command("vitmsn-export")
    from vitmsn.core.interrupts import deferred

    with deferred():  # click, torch and ONNX tooling load here: a signal waits until they have (vitmsn.core.interrupts)
        from .export_cmd import main as export_cmd_main

    export_cmd_main()


def __getattr__(name: str) -> Any:  # `from vitmsn.cli import group` without importing click eagerly
    if name == "group":
        from .main_group import group

        return group
    raise AttributeError(name)
