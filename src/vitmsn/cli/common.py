"""What every command shares: error-to-exit-code mapping and option parsing helpers."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import click

from vitmsn.errors import InputError, ValidationFailed

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED_GATE, EXIT_USAGE = 0, 1, 2


def handle_errors(func: F) -> F:
    """Map vitmsn's errors to the contract's exit codes: InputError -> 2, ValidationFailed -> 1."""

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

    return wrapper  # type: ignore[return-value]
