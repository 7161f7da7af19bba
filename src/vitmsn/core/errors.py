"""Errors shared by every part of vitmsn. Kept import-light: the runtime uses them too."""

from __future__ import annotations


class VitmsnError(Exception):
    """Base class for errors vitmsn raises on purpose."""


class InputError(VitmsnError):
    """Bad usage or bad input: a file, option or value the user must fix (CLI exit code 2).

    The message names the file or option and what to do about it.
    """


class ValidationFailed(VitmsnError):
    """Artifacts were written, but a validation stage or a drift gate failed, or a gate could not be decided
    on the images it had (CLI exit code 1). ``verdict``: "failed" or "inconclusive", the message's first word."""

    def __init__(self, message: str, verdict: str = "failed") -> None:
        super().__init__(message)
        self.verdict = verdict
