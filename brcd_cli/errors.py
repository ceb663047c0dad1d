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
