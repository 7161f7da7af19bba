"""Console-script entry points: install the SIGINT/SIGTERM handlers before anything else is imported.

Standard library only up to :func:`vitmsn.interrupts.install`, so an interrupt that lands while
the command's modules load (click, torch, ...) ends in exit 130/143 rather than a traceback.
"""

from __future__ import annotations

import sys

from vitmsn import interrupts


def _run(module: str) -> None:
    interrupts.install()
    try:
        with interrupts.deferred():
            main = __import__(module, fromlist=["main"]).main
    except KeyboardInterrupt as exc:
        print(f"interrupted ({'SIGTERM' if interrupts.exit_code_of(exc) == 143 else 'SIGINT'}) while starting",
              file=sys.stderr)
        sys.exit(interrupts.exit_code_of(exc))
    main()


def export_main() -> None:
    """``vitmsn-export``."""
    _run("vitmsn.cli.export_cmd")


def vitmsn_main() -> None:
    """``vitmsn``."""
    _run("vitmsn.cli")
