"""Codes files: the packed binary codes of a collection plus each item's id, on disk.

Layout and a numpy-only reader are documented in docs/codes-format.md.
"""
from __future__ import annotations

from .header import CodesFileError
from .merge import concatenate_codes
from .reader import CodeIds, CodesFile, read_codes
from .writer import CodesWriter, write_codes

__all__ = ["CodeIds", "CodesFile", "CodesFileError", "CodesWriter", "concatenate_codes", "read_codes", "write_codes"]
