"""Console-script entry points: install the SIGINT/SIGTERM handlers before anything else is imported.

Standard library only up to :func:`vitmsn.core.interrupts.install`, so an interrupt that lands while
the command's modules load (click, torch, ...) ends in exit 130/143 rather than a traceback.
"""

from __future__ import annotations

import sys

from vitmsn.core import interrupts


def _run(name: str) -> None:
    interrupts.install()
    try:
        with interrupts.deferred():
            main = getattr(__import__("vitmsn.cli", fromlist=[name]), name)  # stdlib only: see vitmsn.cli
        main()  # loads the command's modules in a deferred block of its own, then runs it
    except KeyboardInterrupt as exc:  # only while starting: a running command maps it to 130/143 itself
        print(f"interrupted ({'SIGTERM' if interrupts.exit_code_of(exc) == 143 else 'SIGINT'}) while starting",
              file=sys.stderr)
        sys.exit(interrupts.exit_code_of(exc))


def export_main() -> None:
    """``vitmsn-export``."""
    _run("export_main")


def vitmsn_main() -> None:
    """``vitmsn``."""
    _run("main")
