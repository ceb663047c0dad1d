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
REQUIRED = {"brcd_qps", "faiss_qps", "speedup", "exact", "backend", "simd_path", "threads", "faiss", "load_average",
            "brcd_codes_per_s_per_core", "faiss_codes_per_s_per_core", "cpu"}


def _has_faiss() -> bool:
    return bench_search._load_faiss()[0] is not None


@pytest.mark.parametrize("bits", [64, 128, 24])
def test_throughput_report_is_exact(bits: int) -> None:
    report = run_search_bench(SearchBenchConfig(bits=bits, **SMALL))
    assert REQUIRED <= set(report)
    assert report["mode"] == "throughput" and report["bits"] == bits and report["threads"] == 2
    assert report["exact"] is True and report["brcd_qps"] > 0
    # Every query reads all n codes, spread over the threads.
    assert report["brcd_codes_per_s_per_core"] == pytest.approx(report["brcd_qps"] * SMALL["n"] / 2, rel=1e-3)
    if _has_faiss():
        assert report["faiss_qps"] > 0 and report["speedup"] == pytest.approx(
            report["brcd_qps"] / report["faiss_qps"], rel=1e-2, abs=2e-3)
        assert report["faiss_codes_per_s_per_core"] == pytest.approx(report["faiss_qps"] * SMALL["n"] / 2, rel=1e-3)
        assert "faiss distances for every query" in report["exact_checked_by"]
    json.dumps(report)  # JSON-ready


def test_report_names_the_simd_path_and_rate_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced SIMD path is the one reported, in the JSON and in the text beside each queries/s."""
    from brcd_cli import kernels

    features = kernels.native_features() if kernels.available_backends()["native"] == "available" else None
    if features is None:
        pytest.skip("native extension not built")
    path = features["simd_paths_supported"][-1]  # scalar: every CPU has it
    monkeypatch.setenv("BRCD_SIMD", path)
    report = run_search_bench(SearchBenchConfig(bits=64, **SMALL))
    assert report["simd_path"] == path and report["cpu"]
    lines = bench_search.format_report(report)
    assert any(f"SIMD path: {path}" in line for line in lines)
    brcd_line = next(line for line in lines if line.startswith("brcd ") and "queries/s" in line)
    assert f"{report['brcd_codes_per_s_per_core'] / 1e9:.2f} G codes/s per core" in brcd_line


@pytest.mark.parametrize("queries", [50, 1])
def test_rounds_report_each_ratio_and_best_over_best(queries: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds alternate the two sides; the headline is the best brcd round over the best faiss round."""
    if not _has_faiss():
        pytest.skip("faiss (bench extra) not installed")
    monkeypatch.setattr(bench_search, "_OMP_SPIN_SECONDS", 0.0)
    report = run_search_bench(SearchBenchConfig(bits=64, n=3000, queries=queries, k=10, threads=2, repeats=1, rounds=3))
    rounds = report["round_results"]
    assert len(rounds) == 3 and report["exact"] is True
    for entry in rounds:
        assert entry["speedup"] == pytest.approx(entry["brcd_qps"] / entry["faiss_qps"], rel=1e-2, abs=2e-3)
    assert report["brcd_qps"] == max(e["brcd_qps"] for e in rounds)
    assert report["faiss_qps"] == max(e["faiss_qps"] for e in rounds)
    assert report["speedup"] == pytest.approx(report["brcd_qps"] / report["faiss_qps"], rel=1e-2, abs=2e-3)
    ratios = sorted(e["speedup"] for e in rounds)
    assert report["speedup_per_round"] == {"min": ratios[0], "median": ratios[1], "max": ratios[2]}
    if queries == 1:
        best = max(rounds, key=lambda e: e["brcd_qps"])
        assert report["brcd_latency_ms"] == best["brcd_latency_ms"]
    assert any(line.startswith("per round (3):") for line in bench_search.format_report(report))
    json.dumps(report)


def test_one_round_keeps_the_plain_report() -> None:
    report = run_search_bench(SearchBenchConfig(bits=64, **SMALL))
    assert report["rounds"] == 1 and "round_results" not in report and "speedup_per_round" not in report


def test_latency_mode_reports_percentiles() -> None:
    report = run_search_bench(SearchBenchConfig(bits=64, n=2000, queries=1, k=5, threads=1, repeats=1))
    assert report["mode"] == "latency" and report["queries"] == 1
    assert report["brcd_codes_per_s_per_core"] == pytest.approx(report["brcd_qps"] * 2000, rel=1e-3)
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


# -- brcd bench encode -------------------------------------------------------------------------------

def test_bench_encode_reports_speed_split_identity_and_codes_moved(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from brcd_cli.bench.encode import EncodeBenchConfig, make_folder, run_encode_bench
    from brcd_cli.data import jpeg_eighth
    from brcd_cli.data import synthetic_source
    from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
    from conftest import TINY_ARCH

    model = tmp_path / "teacher"
    train_teacher(synthetic_source(n=32, n_classes=4), model,
                  TeacherOptions(arch=TINY_ARCH, bits=16, image_size=32, pretrained="none",
                                 fit=FitOptions(epochs=1, batch_size=16)), log=lambda _: None)
    config = EncodeBenchConfig(model=model, folder=tmp_path / "jpegs", images=7, distinct=3,
                               sizes=((640, 480), (360, 480)), batch_size=4, workers=2, split_images=2, native_crops=0)
    report = run_encode_bench(config)
    # with brcd's own 1/8-scale decoder on, the draft is measured again with Pillow decoding every JPEG
    decodings = {"draft", "draft-pillow", "exact"} if jpeg_eighth.enabled() else {"draft", "exact"}
    assert report["images"] == 7 and report["network_images_per_s"] > 0
    assert set(report["split_ms"]) == decodings and report["split_ms"]["draft"]["decode_ms"] > 0
    rows = {(r["decoding"], r["workers"]): r for r in report["end_to_end"]}
    assert set(rows) == {(d, w) for d in decodings for w in (0, 2)}
    assert all(r["images"] == 7 and r["skipped"] == 0 and r["images_per_s"] > 0 for r in rows.values())
    assert report["parallel_identical_to_serial"] == dict.fromkeys(decodings, True)
    assert report["native_draft_identical_to_pillow"] is (True if jpeg_eighth.enabled() else None)
    assert report["jpeg_decoder"] == jpeg_eighth.status()
    moved = report["codes_moved"]["draft_vs_exact"]
    assert moved["bench_folder"]["codes"] == 7 and moved["native_photographs"]["codes"] == 20
    assert 0 <= moved["bench_folder"]["mean_bits_changed"] <= moved["bench_folder"]["max_bits_changed"] <= 16
    # the folder is made once: a second run finds it by its manifest and leaves the files alone
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jpegs").glob("*.jpg")}
    assert make_folder(config) == tmp_path / "jpegs" and len(before) == 7
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jpegs").glob("*.jpg")} == before
    assert 4 * 1024 < min((tmp_path / "jpegs" / n).stat().st_size for n in before)  # noisy, detailed files
    code, out, err = run_cli(["bench", "encode", "--model", str(model), "--folder", str(tmp_path / "jpegs"),
                              "--images", "7", "--distinct", "3", "--sizes", "640x480,360x480", "--batch-size", "4",
                              "--workers", "2", "--native-crops", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["parallel_identical_to_serial"] == dict.fromkeys(decodings, True)
    code, out, err = run_cli(["bench", "encode", "--model", str(model), "--folder", str(tmp_path / "jpegs"),
                              "--images", "7", "--distinct", "3", "--sizes", "640x480,360x480", "--batch-size", "4",
                              "--workers", "2", "--no-exact", "--json"], capsys)
    assert code == 0, err
    fast = json.loads(out)
    assert set(fast["split_ms"]) == decodings - {"exact"} and fast["codes_moved"] == {}
    code, _, err = run_cli(["bench", "encode", "--sizes", "640by480"], capsys)
    assert code == 1 and "WIDTHxHEIGHT" in err.strip().splitlines()[-1]
