"""`brcd bench lookup`: hash-table lookup (multi-index hashing) against brcd's own linear scan and faiss.

One run, one set of seeded codes, single-query calls (the case an index is
for: one user, one query, answer now). Three searchers answer the same
queries:

- brcd's multi-index hashing (:mod:`brcd_cli.kernels.mih`), exact;
- brcd's linear scan (:func:`brcd_cli.kernels.radius_search` / ``knn``), exact,
  on every core;
- faiss's IndexBinaryMultiHash with the same number of tables and
  ``nflip = radius // m`` (then its range search is exact by the pigeonhole
  principle; its k-NN probes a fixed number of flips and may miss neighbours,
  which ``faiss_exact`` reports).

``exact`` is true only when the index returned exactly the scan's (distance,
index) lists for every query. Codes are uniform random (every bit a coin
flip: the case with no structure to exploit) or clustered: seeded random
centres, each code a centre with every bit flipped with probability ``flip``,
which is how trained hash codes look (similar images share most bits).
Queries are near-duplicates of database codes (uniform) or fresh draws from
the same clusters (clustered).

brcd is timed before faiss runs at all, and the index and the scan are timed
in alternation, ``repeats`` rounds, each method's median kept, so a busy
machine slows all of them alike. The load average is part of the report.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .. import kernels
from ..errors import BrcdError
from ..kernels import mih
from .search import _load_faiss, random_codes


# Uniform-code queries are database codes with up to this many bits flipped (see near_duplicates).
QUERY_MAX_FLIPS = 3


@dataclass(frozen=True)
class LookupBenchConfig:
    """What to measure: code length, database size, radius or k, data kind, queries and repeats."""

    bits: int = 64
    n: int = 1_000_000
    radius: Optional[int] = 2
    k: Optional[int] = None  # k-NN instead of radius search when given
    clustered: bool = False
    clusters: int = 1000
    flip: float = 0.05
    queries: int = 1000
    repeats: int = 3
    m: Optional[int] = None
    threads: Optional[int] = None
    seed: int = 0
    use_faiss: bool = True

    def validate(self) -> None:
        """Impossible settings become one-line user errors before any work is done."""
        if self.bits <= 0 or self.bits % 8 or self.bits > 512:
            raise BrcdError(f"--bits must be a positive multiple of 8 up to 512, got {self.bits}")
        for name in ("n", "queries", "repeats", "clusters"):
            if getattr(self, name) < 1:
                raise BrcdError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.k is None and (self.radius is None or self.radius < 0):
            raise BrcdError("give --radius R >= 0 or --k K")
        if self.k is not None and self.k < 1:
            raise BrcdError(f"--k must be at least 1, got {self.k}")
        if not 0.0 <= self.flip <= 0.5:
            raise BrcdError(f"--flip must be between 0 and 0.5, got {self.flip}")
        if self.m is not None and not 1 <= self.m <= self.bits:
            raise BrcdError(f"--m must be between 1 and {self.bits}, got {self.m}")
        if self.threads is not None and self.threads < 1:
            raise BrcdError(f"--threads must be at least 1, got {self.threads}")


def clustered_codes(n: int, bits: int, clusters: int, flip: float, rng: np.random.Generator,
                    centres: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """n packed codes, each a random one of the (seeded) centres with every bit flipped with probability flip.

    Returns (codes, centres); pass the centres back to draw queries from the same clusters.
    """
    if centres is None:
        centres = rng.integers(0, 2, size=(clusters, bits), dtype=np.uint8).astype(bool)
    out = np.empty((n, bits // 8), dtype=np.uint8)
    step = 1 << 16
    for start in range(0, n, step):
        size = min(step, n - start)
        members = centres[rng.integers(0, len(centres), size=size)]
        flips = rng.random((size, bits)) < flip
        out[start : start + size] = np.packbits(members ^ flips, axis=1, bitorder="little")
    return out, centres


def near_duplicates(db: np.ndarray, count: int, max_flips: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random database codes, each with 0..max_flips of its bits flipped (distinct bits, at random).

    Uniform random queries would have no database code within a small radius
    (at 64 bits and a million codes the nearest is about 13 bits away), so the
    radius search would return nothing and its exactness would prove little;
    a near-duplicate has its source within reach, as in a real lookup.
    """
    bits = 8 * db.shape[1]
    signs = np.unpackbits(db[rng.integers(0, len(db), size=count)], axis=1, bitorder="little").astype(bool)
    for row in signs:
        flips = int(rng.integers(0, max_flips + 1))
        row[rng.choice(bits, size=flips, replace=False)] ^= True
    return np.packbits(signs, axis=1, bitorder="little")


# A timed round lasts at least this long: a pass over the queries through the index can take a few
# milliseconds, too short for a steady clock (frequency ramps, a stray interrupt), so it is repeated.
MIN_ROUND_SECONDS = 0.25


def _per_query_seconds(search: Callable[[np.ndarray], Any], queries: np.ndarray,
                       min_seconds: float = MIN_ROUND_SECONDS) -> float:
    """Mean wall time of one single-query call: passes over every query until min_seconds have passed."""
    search(queries[:1])
    calls = 0
    t0 = time.perf_counter()
    while True:
        for i in range(len(queries)):
            search(queries[i : i + 1])
        calls += len(queries)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def _index_bytes(tables: list[mih.Table]) -> int:
    """Bytes of the index's arrays (what an index file holds, less its small header and padding)."""
    total = 0
    for t in tables:
        total += t.offsets.nbytes + t.ids.nbytes + t.codes.nbytes + (t.keys.nbytes if t.keys is not None else 0)
    return total


def run_lookup_bench(config: LookupBenchConfig) -> dict[str, Any]:
    """Build the index, time index / scan / faiss on the same queries, check exactness; a JSON-ready report."""
    config.validate()
    threads = config.threads if config.threads is not None else kernels.default_threads()
    rng = np.random.default_rng(config.seed)
    if config.clustered:
        db, centres = clustered_codes(config.n, config.bits, config.clusters, config.flip, rng)
        q, _ = clustered_codes(config.queries, config.bits, config.clusters, config.flip, rng, centres)
    else:
        db = random_codes(config.n, config.bits, rng)
        q = near_duplicates(db, config.queries, QUERY_MAX_FLIPS, rng)
    knn_mode = config.k is not None

    t0 = time.perf_counter()
    tables = mih.build_tables(db, config.m)
    build_seconds = time.perf_counter() - t0
    index = mih.MultiIndex(config.bits, tables)
    m = index.m

    if knn_mode:
        k = int(config.k)
        mih_search = lambda x: index.knn(x, k)  # noqa: E731
        scan_search = lambda x: kernels.knn(x, db, k, threads=threads)  # noqa: E731
    else:
        r = int(config.radius)
        mih_search = lambda x: index.radius_search(x, r)  # noqa: E731
        scan_search = lambda x: kernels.radius_search(x, db, r, threads=threads)  # noqa: E731

    mih_times, scan_times = [], []
    for _ in range(config.repeats):
        mih_times.append(_per_query_seconds(mih_search, q))
        scan_times.append(_per_query_seconds(scan_search, q))
    mih_qps = 1.0 / float(np.median(mih_times))
    scan_qps = 1.0 / float(np.median(scan_times))

    got, want = mih_search(q), scan_search(q)
    exact = all(np.array_equal(a, b) for a, b in zip(got, want))
    results_per_query = (len(want[1]) / len(q)) if not knn_mode else float(want[1].shape[1])

    faiss, faiss_version = _load_faiss() if config.use_faiss else (None, "not measured (--no-faiss)")
    faiss_qps: Optional[float] = None
    faiss_exact: Optional[bool] = None
    if faiss is not None:
        faiss_qps, faiss_exact = _faiss_multihash(faiss, db, q, config, m, want)

    report: dict[str, Any] = {
        "bits": config.bits,
        "n": config.n,
        "mode": "knn" if knn_mode else "radius",
        "radius": None if knn_mode else config.radius,
        "k": config.k,
        "data": "clustered" if config.clustered else "uniform",
        "clusters": config.clusters if config.clustered else None,
        "flip": config.flip if config.clustered else None,
        "queries": config.queries,
        "repeats": config.repeats,
        "m": m,
        "substring_bits": [t.width for t in tables],
        "mih_qps": round(mih_qps, 1),
        "scan_qps": round(scan_qps, 1),
        "faiss_multihash_qps": round(faiss_qps, 1) if faiss_qps else None,
        "speedup": round(mih_qps / scan_qps, 2),
        "speedup_vs_faiss_multihash": round(mih_qps / faiss_qps, 2) if faiss_qps else None,
        "exact": bool(exact),
        "faiss_multihash_exact": faiss_exact,
        "results_per_query": round(results_per_query, 2),
        "build_seconds": round(build_seconds, 4),
        "index_bytes_per_code": round(_index_bytes(tables) / config.n, 2),
        "scan_threads": threads,
        "mih_threads": 1,
        "mih_backend": index.backend,
        "mih_path": (mih.native_features() or {}).get("path"),
        "scan_backend": kernels.active_backend(),
        "faiss": faiss_version,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    return report


def _faiss_multihash(faiss: Any, db: np.ndarray, q: np.ndarray, config: LookupBenchConfig, m: int,
                     want: tuple[np.ndarray, ...]) -> tuple[float, bool]:
    """faiss IndexBinaryMultiHash with m tables of floor(bits / m) bits: queries/s and whether it was exact.

    faiss's range search keeps distances strictly below its radius, so it is
    asked for radius + 1. One OpenMP thread: every call holds one query, and
    idle OpenMP workers would otherwise spin on the cores after each call.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index = faiss.IndexBinaryMultiHash(config.bits, m, config.bits // m)
        index.add(db)
        if config.k is not None:
            index.nflip = 1
            search = lambda x: index.search(x, int(config.k))  # noqa: E731
        else:
            index.nflip = int(config.radius) // m
            search = lambda x: index.range_search(x, int(config.radius) + 1)  # noqa: E731
        seconds = float(np.median([_per_query_seconds(search, q) for _ in range(config.repeats)]))
        got = search(q)
    finally:
        faiss.omp_set_num_threads(previous)
    if config.k is not None:
        exact = bool(np.array_equal(np.asarray(got[0], dtype=np.int32), want[0]))
    else:
        lims, dist, _ = got
        exact = bool(np.array_equal(np.asarray(lims, np.int64), want[0])) and all(
            np.array_equal(np.sort(dist[lims[i] : lims[i + 1]]), want[1][want[0][i] : want[0][i + 1]])
            for i in range(len(q))
        )
    return 1.0 / seconds, exact


def format_report(report: dict[str, Any]) -> list[str]:
    """Human-readable lines (the --json output carries the same numbers)."""
    what = f"k={report['k']}" if report["mode"] == "knn" else f"radius {report['radius']}"
    lines = [
        f"{report['bits']}-bit {report['data']} codes, n={report['n']}, {what}, single query, m={report['m']}",
        f"index  {report['mih_qps']:>12,.0f} queries/s  (build {report['build_seconds']:.2f} s, "
        f"{report['index_bytes_per_code']:.1f} bytes per code)",
        f"scan   {report['scan_qps']:>12,.0f} queries/s  ({report['scan_threads']} threads)",
    ]
    if report["faiss_multihash_qps"]:
        lines.append(f"faiss  {report['faiss_multihash_qps']:>12,.0f} queries/s  (IndexBinaryMultiHash, exact: "
                     f"{report['faiss_multihash_exact']})")
    else:
        lines.append(f"faiss: {report['faiss']}")
    lines.append(f"speedup {report['speedup']:.1f}x over the scan; exact: {report['exact']}; "
                 f"{report['results_per_query']:.1f} results per query")
    if report["load_average"] is not None:
        lines.append(f"load average: {' '.join(str(x) for x in report['load_average'])}")
    return lines


__all__ = ["LookupBenchConfig", "clustered_codes", "format_report", "run_lookup_bench"]
