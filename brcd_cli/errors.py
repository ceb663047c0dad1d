"""Errors a user can cause.

Every exception that derives from :class:`BrcdError` is shown by the CLI as
one line (no traceback) with a non-zero exit code; anything else is a bug.
"""
from __future__ import annotations


class BrcdError(Exception):
    """A problem with the user's input, files or options (not a bug)."""

    exit_code: int = 1


class DataError(BrcdError):
    """An image collection, list file or image cannot be read."""

    exit_code = 3


class ModelError(BrcdError):
    """A checkpoint is missing, corrupt, unsafe or does not match."""

    exit_code = 4


class OptionError(BrcdError):
    """An option's value is out of range, named by its field so that each caller can name it in its own words.

    The library says ``k must be positive``; the CLI maps the field to its flag
    (``-k must be positive``) in one table, so the rule and its wording live
    where the value is checked, not beside every flag that sets it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem
