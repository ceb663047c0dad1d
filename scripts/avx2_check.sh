#!/usr/bin/env bash
# Time the AVX2 scan against faiss IndexBinaryFlat on this machine, both step
# shapes of the AVX2 kernel (BRCD_AVX2_STEP=wide|narrow), in one go, and print
# one table: the figures a machine without AVX-512 (or any x86-64 machine, with
# the AVX2 path forced) needs to say how close the scan comes and which shape
# it should run by default. About 5 minutes on one core.
#
#   scripts/avx2_check.sh                 # results in $OUT, else /tmp/brcd-avx2-check
#   ROUNDS=5 THREADS="1 2" scripts/avx2_check.sh
#
# Needs brcd installed with the bench extra (faiss-cpu): pip install -e '.[bench]'.
# Writes into the results folder: cpu.txt (lscpu), info.txt (brcd info), one
# JSON report per run (<bits>_<threads>_<shape>.json, lat_<bits>_<shape>.json),
# kernels.txt (the C++ driver: every path against scalar, then codes/s per
# path and shape without Python), and summary.txt (the table printed at the end).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${OUT:-${TMPDIR:-/tmp}/brcd-avx2-check}"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-1 2}"
PY="${PYTHON:-python3}"
mkdir -p "$RESULTS"
export BRCD_SIMD=avx2

lscpu > "$RESULTS/cpu.txt" 2>&1 || true
grep -m1 "Model name" "$RESULTS/cpu.txt" || true
brcd info > "$RESULTS/info.txt" 2>&1 || { echo "brcd info failed: is brcd installed?"; cat "$RESULTS/info.txt"; exit 1; }
grep -E "cpu_simd|cpu_avx2" "$RESULTS/info.txt"

if command -v g++ > /dev/null; then
    g++ -O3 -std=c++17 -I"$ROOT/csrc" "$ROOT/csrc/tests/scan_test.cpp" -o "$RESULTS/scan_test" \
        && { "$RESULTS/scan_test" && "$RESULTS/scan_test" --bench; } > "$RESULTS/kernels.txt" 2>&1
    grep -E "mismatches|avx2" "$RESULTS/kernels.txt"
fi

for shape in wide narrow; do
    for bits in 64 128 256; do
        for t in $THREADS; do
            BRCD_AVX2_STEP=$shape brcd bench search --bits "$bits" --n 1000000 --queries 1000 -k 100 --threads "$t" \
                --rounds "$ROUNDS" --json > "$RESULTS/${bits}_${t}_${shape}.json" || exit 1
        done
        BRCD_AVX2_STEP=$shape brcd bench search --bits "$bits" --n 1000000 --queries 1 -k 100 --threads 1 \
            --rounds "$ROUNDS" --json > "$RESULTS/lat_${bits}_${shape}.json" || exit 1
    done
done

"$PY" - "$RESULTS" << 'EOF' | tee "$RESULTS/summary.txt"
import json, pathlib, sys

results = pathlib.Path(sys.argv[1])
print(f"{'run':22s} {'brcd q/s':>10s} {'faiss q/s':>10s} {'best/best':>9s} {'per round':>18s} {'G codes/s/core':>14s}")
for path in sorted(results.glob("*.json")):
    r = json.loads(path.read_text())
    per = r.get("speedup_per_round") or {}
    spread = f"{per.get('min', 0):.2f}-{per.get('max', 0):.2f}" if per else ""
    if r["mode"] == "latency":
        line = (f"{path.stem:22s} p50 {r['brcd_latency_ms']['p50']:.3f} ms vs {r['faiss_latency_ms']['p50']:.3f} ms: "
                f"{r['latency_ratio']:.2f}x of faiss's latency")
    else:
        line = (f"{path.stem:22s} {r['brcd_qps']:10.0f} {r['faiss_qps']:10.0f} {r['speedup']:8.2f}x {spread:>18s} "
                f"{r['brcd_codes_per_s_per_core'] / 1e9:14.2f}")
    print(line + ("" if r["exact"] else "  NOT EXACT"))
print(f"cpu: {r['cpu']}; SIMD path {r['simd_path']}; load average at the end {r['load_average']}")
EOF
