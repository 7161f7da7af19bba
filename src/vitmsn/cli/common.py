"""What every command shares: error-to-exit-code mapping, the ARTIFACTS argument, option helpers."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from vitmsn.core.errors import InputError, ValidationFailed
from vitmsn.core.interrupts import exit_code_of, received

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED_GATE, EXIT_USAGE = 1, 2
NO_ARTIFACTS = ("ARTIFACTS is required: pass the artifacts directory, or set out = \"...\" under [tool.vitmsn] "
                "in pyproject.toml or in vitmsn.toml (found in this directory or one above it)")


def handle_errors(func: F) -> F:
    """Map vitmsn's errors to the contract's exit codes, each with a one-line message and no traceback:
    InputError -> 2, ValidationFailed -> 1, a missing optional package -> 2 with the one-line install hint,
    SIGINT -> 130 and SIGTERM -> 143 (:mod:`vitmsn.core.interrupts`; every ``finally`` has run by then, so what
    the command was writing is removed)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except ValidationFailed as exc:
            click.echo(f"{getattr(exc, 'verdict', 'failed').upper()}: {exc}", err=True)
            sys.exit(EXIT_FAILED_GATE)
        except KeyboardInterrupt as exc:  # vitmsn.core.interrupts.Interrupted, or Python's own SIGINT handler
            exit_interrupted(exc)
        except ModuleNotFoundError as exc:
            from .extras import EXTRA_OF, install_hint

            if received() is not None:
                exit_interrupted(exc)
            if not exc.name or exc.name.split(".")[0] not in EXTRA_OF:
                raise
            ctx = click.get_current_context(silent=True)
            click.echo(install_hint(exc.name, f"'{ctx.command_path if ctx else 'vitmsn'}'"), err=True)
            sys.exit(EXIT_USAGE)
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


def artifacts_argument(**kwargs: Any) -> Callable[[F], F]:
    """ARTIFACTS, optional on the command line: the config file's ``out`` is its default (:func:`need_artifacts`)."""
    return click.argument("artifacts", required=False, type=click.Path(path_type=Path, **kwargs))


def need_artifacts(artifacts: Path | str | None) -> Path:
    if artifacts is None or str(artifacts) == "":
        raise InputError(NO_ARTIFACTS)
    return Path(artifacts)


def choice_notes(choice: Any, verbose: bool, asked: bool) -> list[str]:
    """What predict/serve say at start-up about the runtime's choice: the verdict's line for a precision not plainly
    passed, always; the notes on what it did not use with -v, when the user asked for a backend or precision, or on
    a machine with a CUDA GPU (an engine not used there is news); on a CPU machine nobody asked for TensorRT, so its
    absence is not worth a line."""
    from vitmsn.runtime.backends.device import has_cuda_gpu

    notes = list(choice.notes) if verbose or asked or has_cuda_gpu() else []
    return ([choice.verdict] if choice.verdict else []) + notes
