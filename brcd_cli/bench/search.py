"""`brcd bench search`: exact k-NN throughput (or single-query latency) of brcd against faiss.

Both libraries search the same seeded random packed codes in the same process,
with the same thread count, so the speedup is a like-for-like ratio even on a
busy machine. faiss's IndexBinaryFlat is the peer: it is the exact binary index
a user would otherwise reach for. faiss comes from the ``bench`` extra; without
it the brcd side still runs and the report says why faiss is missing.

Beside queries/s the report gives codes compared per second per core (queries/s
times the database size over the thread count), the SIMD path that ran
(``BRCD_SIMD`` forces one) and the CPU model, so that a run on any machine can be
set against that machine's per-core limit (docs/kernels.md derives it).

Correctness is part of the report: ``exact`` is true only when brcd's k
distances equal the peer's for every query (faiss is exact too, but orders ties
its own way, so only distances are compared) and brcd's (distance, index) lists
equal the numpy reference kernels' for a sample of queries (the reference is too
slow to run on every query of a million-code database).

A shared machine's speed drifts by up to 2x within a minute, so one ratio of
two timings taken a minute apart says more about the machine than about the
kernels. ``rounds`` repeats the pair (brcd, then faiss) back to back and
reports every round's ratio beside the best brcd round over the best faiss
round, so that a comparison of "the best of three runs each" comes from one
command in which both sides saw the same spells of the machine.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

from .. import kernels
from ..errors import BrcdError
from ..kernels import reference

# Latency mode reports these percentiles of the per-query time.
LATENCY_PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SearchBenchConfig:
    """What to measure: code length, database size, queries per batch, k, threads, repeats, rounds."""

    bits: int = 64
    n: int = 1_000_000
    queries: int = 1000
    k: int = 100
    threads: Optional[int] = None
    repeats: int = 3
    seed: int = 0
    check_queries: int = 4
    backend: Optional[str] = None
    use_faiss: bool = True
    rounds: int = 1

    def validate(self) -> None:
        """Turn impossible settings into one-line user errors before any work is done."""
        if self.bits <= 0 or self.bits % 8:
            raise BrcdError(f"--bits must be a positive multiple of 8, got {self.bits}")
        for name in ("n", "queries", "k", "repeats", "rounds"):
            if getattr(self, name) < 1:
                raise BrcdError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise BrcdError(f"--threads must be at least 1, got {self.threads}")
        if self.check_queries < 0:
            raise BrcdError(f"--check-queries must be >= 0, got {self.check_queries}")

    @property
    def latency_mode(self) -> bool:
        """One query per call: report per-call latency percentiles instead of batch throughput."""
        return self.queries == 1


def random_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random packed codes: every bit independent, the hardest case for pruning."""
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def _load_faiss() -> tuple[Any, str]:
    """The faiss module and its version, or (None, why it is unavailable)."""
    try:
        import faiss  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        return None, f"unavailable ({type(exc).__name__}: {exc}); install the bench extra: pip install 'brcd[bench]'"
    return faiss, str(getattr(faiss, "__version__", "unknown"))


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of `repeats` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _latencies_ms(search_one: Callable[[np.ndarray], Any], queries: np.ndarray) -> np.ndarray:
    """Per-call latency of one-query searches, each query in its own call, after one warm-up."""
    search_one(queries[:1])
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search_one(queries[i : i + 1])
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def codes_per_second_per_core(qps: float, n: int, threads: int) -> float:
    """Database codes compared per second by each thread: every query reads all n codes."""
    return qps * n / threads


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo on Linux, with its x86 family and model numbers (a virtual
    machine often names only the brand, and these tell the core generation apart), else the platform's name."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
    if not name:
        return platform.processor() or platform.machine() or "unknown"
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(ms, p)), 4) for p in LATENCY_PERCENTILES}


def _check_against_reference(
    q: np.ndarray, db: np.ndarray, k: int, got_d: np.ndarray, got_i: np.ndarray, sample: int, rng: np.random.Generator
) -> bool:
    """brcd's (distance, index) lists equal the numpy reference's for a random sample of queries."""
    if sample == 0:
        return True
    rows = np.sort(rng.choice(len(q), size=min(sample, len(q)), replace=False))
    want_d, want_i = reference.knn(q[rows], db, k)
    return bool(np.array_equal(got_d[rows], want_d) and np.array_equal(got_i[rows], want_i))


# How long libgomp's idle workers keep spinning after a parallel region (its
# default spin count is a few hundred milliseconds of polling).
_OMP_SPIN_SECONDS = 0.5


def _measure(search: Callable[[np.ndarray], Any], q: np.ndarray, config: SearchBenchConfig, n_q: int) -> dict[str, Any]:
    """One side's timing: latency percentiles of one-query calls, or the median batch time."""
    if config.latency_mode:
        ms = _latencies_ms(search, q)
        return {"latency_ms": _percentiles(ms), "qps": 1e3 / float(np.median(ms))}
    seconds, _ = _median_seconds(lambda: search(q), config.repeats)
    return {"seconds": round(seconds, 5), "qps": n_q / seconds}


def _round_entry(brcd_side: dict[str, Any], faiss_side: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One round of the report: each side's figures under its name, and their ratio."""
    entry: dict[str, Any] = {}
    for who, side in (("brcd", brcd_side), ("faiss", faiss_side)):
        if side is None:
            entry[f"{who}_qps"] = None
            continue
        for key, value in side.items():
            entry[f"{who}_{key}"] = round(value, 2) if key == "qps" else value
    entry["speedup"] = round(brcd_side["qps"] / faiss_side["qps"], 3) if faiss_side else None
    return entry


def run_search_bench(config: SearchBenchConfig) -> dict[str, Any]:
    """Measure brcd and faiss on the same codes; return a JSON-ready report.

    Batch mode (queries > 1) times whole batches (median of `repeats` after a
    warm-up) and reports queries per second. Latency mode (queries == 1) times
    `max(repeats, 100)` separate one-query calls and reports percentiles; its
    qps is 1 / median latency.
    """
    config.validate()
    threads = config.threads if config.threads is not None else kernels.default_threads()
    rng = np.random.default_rng(config.seed)
    db = random_codes(config.n, config.bits, rng)
    n_q = max(config.repeats, 100) if config.latency_mode else config.queries
    q = random_codes(n_q, config.bits, rng)
    k = config.k

    try:
        backend = kernels.active_backend() if config.backend is None else config.backend
        brcd_search = lambda x: kernels.knn(x, db, k, backend=backend, threads=threads)  # noqa: E731
        brcd_d, brcd_i = brcd_search(q)
    except (ValueError, RuntimeError) as exc:
        raise BrcdError(str(exc)) from None
    features = kernels.native_features() if backend == "native" else None

    faiss, faiss_version = _load_faiss() if config.use_faiss else (None, "not requested (--no-faiss)")
    report: dict[str, Any] = {
        "mode": "latency" if config.latency_mode else "throughput",
        **{key: value for key, value in asdict(config).items() if key not in ("threads", "use_faiss")},
        "threads": threads,
        "backend": backend,
        "simd_path": features["simd_path"] if features else None,
        "avx2_step": features.get("avx2_step") if features and features["simd_path"] == "avx2" else None,
        "cpu": cpu_model(),
        "faiss": faiss_version,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }

    faiss_search: Optional[Callable[[np.ndarray], Any]] = None
    previous_threads = None
    if faiss is not None:
        previous_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexBinaryFlat(config.bits)
        index.add(db)
        faiss_search = lambda x: index.search(x, k)  # noqa: E731
    faiss_d = None
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(config.rounds):
            if r and faiss is not None and threads > 1:
                # faiss's OpenMP workers keep spinning for a while after each
                # call and would steal the cores from brcd's threads.
                time.sleep(_OMP_SPIN_SECONDS)
            brcd_side = _measure(brcd_search, q, config, n_q)
            faiss_side: Optional[dict[str, Any]] = None
            if faiss_search is not None:
                if faiss_d is None:
                    faiss_d = faiss_search(q)[0]
                faiss_side = _measure(faiss_search, q, config, n_q)
            rounds.append(_round_entry(brcd_side, faiss_side))
    finally:
        if faiss is not None:
            faiss.omp_set_num_threads(previous_threads)

    best_brcd = max(rounds, key=lambda e: e["brcd_qps"])
    best_faiss = max(rounds, key=lambda e: e["faiss_qps"] or 0.0)
    for who, best in (("brcd", best_brcd), ("faiss", best_faiss)):
        for key, value in best.items():
            if key.startswith(who + "_"):
                report[key] = value
    brcd_qps, faiss_qps = best_brcd["brcd_qps"], best_faiss["faiss_qps"]
    report["brcd_codes_per_s_per_core"] = round(codes_per_second_per_core(brcd_qps, config.n, threads))
    report["faiss_codes_per_s_per_core"] = (
        round(codes_per_second_per_core(faiss_qps, config.n, threads)) if faiss_qps else None
    )
    report["speedup"] = round(brcd_qps / faiss_qps, 3) if faiss_qps else None
    if config.latency_mode and faiss_qps:
        report["latency_ratio"] = round(report["brcd_latency_ms"]["p50"] / report["faiss_latency_ms"]["p50"], 4)
    if config.rounds > 1:
        report["round_results"] = rounds
        ratios = [e["speedup"] for e in rounds if e["speedup"] is not None]
        report["speedup_per_round"] = (
            {"min": min(ratios), "median": round(float(np.median(ratios)), 3), "max": max(ratios)} if ratios else None
        )
    matches_faiss = faiss_d is None or bool(np.array_equal(brcd_d, faiss_d.astype(np.int32)))
    matches_reference = _check_against_reference(q, db, k, brcd_d, brcd_i, config.check_queries, rng)
    report["exact"] = matches_faiss and matches_reference
    report["exact_checked_by"] = ("faiss distances for every query, " if faiss_d is not None else "") + (
        f"reference kernels on {min(config.check_queries, n_q)} sampled queries"
    )
    return report


def format_report(report: dict[str, Any]) -> list[str]:
    """Human-readable lines for the terminal (the --json output carries the same numbers)."""
    head = (
        f"{report['bits']}-bit codes, n={report['n']}, k={report['k']}, threads={report['threads']}, "
        f"backend={report['backend']}" + (f" ({report['simd_path']})" if report["simd_path"] else "")
    )
    step = f" (step shape {report['avx2_step']})" if report.get("avx2_step") else ""
    lines = [head, f"cpu: {report['cpu']}, SIMD path: {report['simd_path'] or 'none (not the native backend)'}{step}"]
    for who in ("brcd", "faiss"):
        per_core = report.get(f"{who}_codes_per_s_per_core")
        rate = f"  {per_core / 1e9:6.2f} G codes/s per core" if per_core else ""
        if report["mode"] == "latency":
            lat = report.get(f"{who}_latency_ms")
            if lat:
                lines.append(f"{who:6s} latency ms  " + "  ".join(f"{p} {v:.3f}" for p, v in lat.items()) + rate)
        elif report[f"{who}_qps"]:
            lines.append(f"{who:6s} {report[f'{who}_qps']:>12,.0f} queries/s" + rate)
    lines.append(f"faiss: {report['faiss']}")
    if report["speedup"] is not None:
        best = " (best brcd round over best faiss round)" if report.get("round_results") else ""
        lines.append(f"speedup {report['speedup']:.2f}x over faiss IndexBinaryFlat{best}")
    if report.get("speedup_per_round"):
        per = report["speedup_per_round"]
        each = " ".join(f"{e['speedup']:.2f}" for e in report["round_results"])
        lines.append(f"per round ({len(report['round_results'])}): {each}; min {per['min']:.2f}, median {per['median']:.2f}, "
                     f"max {per['max']:.2f}")
    lines.append(f"exact: {report['exact']} ({report['exact_checked_by']})")
    if report["load_average"] is not None:
        lines.append(f"load average: {' '.join(str(x) for x in report['load_average'])}")
    return lines
