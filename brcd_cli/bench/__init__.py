"""Benchmarks that compare brcd with peer libraries in the same run, on the same data.

Each module holds the library side of one ``brcd bench <name>`` command (the
CLI in brcd_cli/cli.py only parses options and prints). Results are ratios
against a peer measured in the same process, because absolute times on a
shared machine say little.
"""
from __future__ import annotations

from .search import SearchBenchConfig, run_search_bench

__all__ = ["SearchBenchConfig", "run_search_bench"]
