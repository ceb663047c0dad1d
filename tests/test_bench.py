"""`brcd bench search`: the report's fields, its exactness check, and the runs without faiss."""
from __future__ import annotations

import json

import numpy as np
import pytest

from brcd_cli.bench import search as bench_search
from brcd_cli.bench.search import SearchBenchConfig, run_search_bench
from brcd_cli.errors import BrcdError
from conftest import run_cli

SMALL = dict(n=3000, queries=20, k=10, threads=2, repeats=1, check_queries=3)
REQUIRED = {"brcd_qps", "faiss_qps", "speedup", "exact", "backend", "simd_path", "threads", "faiss", "load_average"}


def _has_faiss() -> bool:
    return bench_search._load_faiss()[0] is not None


@pytest.mark.parametrize("bits", [64, 128, 24])
def test_throughput_report_is_exact(bits: int) -> None:
    report = run_search_bench(SearchBenchConfig(bits=bits, **SMALL))
    assert REQUIRED <= set(report)
    assert report["mode"] == "throughput" and report["bits"] == bits and report["threads"] == 2
    assert report["exact"] is True and report["brcd_qps"] > 0
    if _has_faiss():
        assert report["faiss_qps"] > 0 and report["speedup"] == pytest.approx(
            report["brcd_qps"] / report["faiss_qps"], rel=1e-2, abs=2e-3)
        assert "faiss distances for every query" in report["exact_checked_by"]
    json.dumps(report)  # JSON-ready


def test_latency_mode_reports_percentiles() -> None:
    report = run_search_bench(SearchBenchConfig(bits=64, n=2000, queries=1, k=5, threads=1, repeats=1))
    assert report["mode"] == "latency" and report["queries"] == 1
    lat = report["brcd_latency_ms"]
    assert set(lat) == {"p50", "p90", "p99"} and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    if _has_faiss():
        assert report["latency_ratio"] == pytest.approx(lat["p50"] / report["faiss_latency_ms"]["p50"], rel=1e-2)


def test_runs_without_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_search, "_load_faiss", lambda: (None, "unavailable (ImportError: no faiss)"))
    report = run_search_bench(SearchBenchConfig(bits=64, **SMALL))
    assert report["faiss_qps"] is None and report["speedup"] is None
    assert report["faiss"].startswith("unavailable") and report["exact"] is True
    lines = bench_search.format_report(report)
    assert any("faiss: unavailable" in line for line in lines)


def test_wrong_results_are_reported_as_inexact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exactness check can fail: a kernel that is off by one on a distance is caught."""
    from brcd_cli import kernels

    real_knn = kernels.knn

    def off_by_one(*args, **kwargs):
        d, i = real_knn(*args, **kwargs)
        d = d.copy()
        d[-1, -1] += 1
        return d, i

    monkeypatch.setattr(kernels, "knn", off_by_one)
    report = run_search_bench(SearchBenchConfig(bits=64, n=500, queries=4, k=3, threads=1, repeats=1, check_queries=4))
    assert report["exact"] is False


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(bits=12), "multiple of 8"),
        (dict(n=0), "--n must be at least 1"),
        (dict(k=0), "--k must be at least 1"),
        (dict(threads=0), "--threads must be at least 1"),
    ],
)
def test_bad_settings_are_user_errors(config: dict, message: str) -> None:
    with pytest.raises(BrcdError, match=message):
        run_search_bench(SearchBenchConfig(**config))


def test_cli_json_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["bench", "search", "--bits", "64", "--n", "2000", "--queries", "8", "-k", "4",
                            "--threads", "1", "--repeats", "1", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert REQUIRED <= set(doc) and doc["exact"] is True and doc["n"] == 2000
    code, out, err = run_cli(["bench", "search", "--bits", "10"], capsys)
    assert code != 0 and "multiple of 8" in err and "Traceback" not in err
    code, out, _ = run_cli(["bench", "search", "--n", "1000", "--queries", "1", "-k", "3", "--threads", "1",
                            "--no-faiss"], capsys)
    assert code == 0 and "brcd   latency ms" in out and "not requested" in out


def test_same_seed_same_codes() -> None:
    a = bench_search.random_codes(5, 64, np.random.default_rng(3))
    b = bench_search.random_codes(5, 64, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (5, 8) and np.array_equal(a, b)
