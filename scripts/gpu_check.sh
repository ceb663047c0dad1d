#!/usr/bin/env bash
# Build brcd's CUDA kernels on this machine, run the GPU tests and the GPU
# benchmarks, in one go (a few minutes on one GPU). Needs python3 with torch
# (CUDA build), nvcc of the same CUDA major version, pybind11, ninja, typer,
# numpy, pytest, torchvision (nvJPEG decoding); cupy is used when installed.
# No network access is needed.
#
#   scripts/gpu_check.sh            # results in $OUT, else /tmp/brcd-gpu-check
#   PYTHON=/path/to/python3 N=1000000 scripts/gpu_check.sh
#
# Writes into the results folder: build.log, tests.log, junit.xml, info.json,
# bench_search.json (extension or first GPU backend), bench_search_cupy.json
# (when CuPy and the extension are both there), bench_loss.json,
# loader_tests.log + junit_loader.xml (nvJPEG decoding), bench_encode.json, summary.json.
# The package is not installed: the extensions are built in place and a
# staging folder maps kernels/ to brcd_cli.kernels as setup.py does.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${OUT:-${TMPDIR:-/tmp}/brcd-gpu-check}"
PY="${PYTHON:-python3}"
N="${N:-10000000}"
mkdir -p "$RESULTS"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
export PYTHONUNBUFFERED=1

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0))" || exit 1
# Machine code for this GPU only keeps the build short.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

step "build (setup.py build_ext --inplace, BRCD_BUILD_CUDA=1, arch $TORCH_CUDA_ARCH_LIST)"
BUILD=ok
(cd "$ROOT" && BRCD_BUILD_CUDA=1 "$PY" setup.py -q build_ext --inplace) >"$RESULTS/build.log" 2>&1 || BUILD=failed
tail -5 "$RESULTS/build.log"
if ! ls "$ROOT"/brcd_cli/_hamming_cuda*.so >/dev/null 2>&1; then
    step "setup.py did not produce the extension; JIT build with torch.utils.cpp_extension.load"
    BUILD=jit
    "$PY" - "$ROOT" "$STAGE/jit" >>"$RESULTS/build.log" 2>&1 <<'EOF' || BUILD=failed
import shutil, sys, sysconfig
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root / "csrc"))
import cuda_build
built = cuda_build.jit_build(Path(sys.argv[2]), verbose=True)
shutil.copy(built, root / "brcd_cli" / ("_hamming_cuda" + sysconfig.get_config_var("EXT_SUFFIX")))
EOF
fi
echo "build: $BUILD"

# Staging package: brcd_cli with kernels/ mounted as brcd_cli.kernels.
mkdir -p "$STAGE/pkg/brcd_cli"
for entry in "$ROOT"/brcd_cli/*; do ln -s "$entry" "$STAGE/pkg/brcd_cli/"; done
ln -s "$ROOT/kernels" "$STAGE/pkg/brcd_cli/kernels"
export PYTHONPATH="$STAGE/pkg${PYTHONPATH:+:$PYTHONPATH}"
cd "$STAGE/pkg"  # so that `import brcd_cli` finds the staged package, not the source folder

step "brcd info"
"$PY" -m brcd_cli info --json >"$RESULTS/info.json" 2>>"$RESULTS/build.log"; cat "$RESULTS/info.json"; echo

step "GPU tests"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
    "$ROOT/tests/test_cuda.py" --junitxml "$RESULTS/junit.xml" >"$RESULTS/tests.log" 2>&1
TESTS=$?
tail -25 "$RESULTS/tests.log"

step "nvJPEG decode tests (tests/test_loader.py: the device decoder, then nvJPEG against Pillow's exact decode)"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
    "$ROOT/tests/test_loader.py" -k "nvjpeg or device_decoder or orientations or resize_crop" \
    --junitxml "$RESULTS/junit_loader.xml" >"$RESULTS/loader_tests.log" 2>&1
LOADER_TESTS=$?
tail -8 "$RESULTS/loader_tests.log"
[ "$LOADER_TESTS" -eq 0 ] || TESTS=$LOADER_TESTS

step "bench: encode 12 MP JPEGs, Pillow draft/exact vs nvJPEG (--decode-device cuda)"
timeout 420 "$PY" -m brcd_cli bench encode --decode-device cuda --sizes 4000x3000 --images 96 --distinct 12 \
    --folder "$RESULTS/bench-encode-jpegs" --json >"$RESULTS/bench_encode.json"; cat "$RESULTS/bench_encode.json"; echo
rm -rf "$RESULTS/bench-encode-jpegs" "$RESULTS/bench-encode-jpegs-work"

step "bench: k-NN, $N codes x 1000 queries, k=100"
timeout 240 "$PY" -m brcd_cli bench search --device cuda --json --n "$N" --queries 1000 -k 100 --repeats 3 \
    >"$RESULTS/bench_search.json"; cat "$RESULTS/bench_search.json"; echo
if "$PY" -c "import cupy" 2>/dev/null && ls "$ROOT"/brcd_cli/_hamming_cuda*.so >/dev/null 2>&1; then
    step "bench: the same through CuPy"
    BRCD_GPU_BACKEND=cupy timeout 180 "$PY" -m brcd_cli bench search --device cuda --json --n "$N" --queries 1000 -k 100 \
        --repeats 3 --check-queries 0 >"$RESULTS/bench_search_cupy.json"; cat "$RESULTS/bench_search_cupy.json"; echo
fi

step "bench: loss kernel, 512 rows x 64 bits, forward + backward"
timeout 120 "$PY" -m brcd_cli bench loss-kernel --json --rows 512 --bits 64 >"$RESULTS/bench_loss.json"
cat "$RESULTS/bench_loss.json"; echo

"$PY" - "$RESULTS" "$BUILD" "$TESTS" "$SECONDS" <<'EOF'
import json, sys
from pathlib import Path
out, build, tests, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception as exc:  # a failed step leaves an empty or missing file
        return {"error": f"{type(exc).__name__}: {exc}"}
summary = {"build": build, "tests_exit_code": tests, "seconds": seconds,
           "search": load("bench_search.json"), "search_cupy": load("bench_search_cupy.json"),
           "loss": load("bench_loss.json"), "encode": load("bench_encode.json")}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: summary[k] for k in ("build", "tests_exit_code", "seconds")}))
EOF
step "done"
[ "$TESTS" -eq 0 ] && [ "$BUILD" != failed ]
