"""What every command shares: error-to-exit-code mapping and option parsing helpers."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import click

from vitmsn.errors import InputError, ValidationFailed
from vitmsn.interrupts import exit_code_of, received

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED_GATE, EXIT_USAGE = 0, 1, 2


def handle_errors(func: F) -> F:
    """Map vitmsn's errors to the contract's exit codes: InputError -> 2, ValidationFailed -> 1,
    SIGINT -> 130 and SIGTERM -> 143 (:mod:`vitmsn.interrupts`; every ``finally`` has run by then, so
    what the command was writing is removed), each with a one-line message and no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except ValidationFailed as exc:
            click.echo(f"FAILED: {exc}", err=True)
            sys.exit(EXIT_FAILED_GATE)
        except KeyboardInterrupt as exc:  # vitmsn.interrupts.Interrupted, or Python's own SIGINT handler
            exit_interrupted(exc)
        except Exception as exc:
            if received() is None:
                raise
            exit_interrupted(exc)  # a library turned the interrupt into another error

    return wrapper  # type: ignore[return-value]


def exit_interrupted(exc: BaseException) -> None:
    """Say what stopped the command and exit 130 (SIGINT) or 143 (SIGTERM)."""
    code = exit_code_of(exc)
    click.echo(f"interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}): stopped; nothing half-written was left", err=True)
    sys.exit(code)
