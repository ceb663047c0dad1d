"""The backend registry on its own, the dispatchers built on it, and the one BRCD_SIMD parser of the C++ side."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest

from brcd_cli.data import jpeg_eighth
from brcd_cli.kernels import cuda, dispatch, mih
from brcd_cli.kernels._registry import BackendError, BackendRegistry, ChoiceError, UnavailableError

ENV = "BRCD_TEST_BACKEND"
KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def _registry(calls: dict[str, int], precondition: Optional[Callable[[], Optional[str]]] = None) -> BackendRegistry:
    """fast (fails to load), middle, slow: each loader counts its calls."""

    def loader(name: str, fails: bool) -> Callable[[], Any]:
        def load() -> Any:
            calls[name] = calls.get(name, 0) + 1
            if fails:
                raise ImportError(f"lib{name}.so: cannot open\nshared object file")
            return f"module {name}"

        return load

    loaders = {"fast": loader("fast", True), "middle": loader("middle", False), "slow": loader("slow", False)}
    return BackendRegistry("test", ENV, loaders, precondition=precondition)


# -- the registry ---------------------------------------------------------------------------------------------


def test_registry_keeps_the_preference_order_and_probes_lazily_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    calls: dict[str, int] = {}
    registry = _registry(calls)
    assert registry.names == ("fast", "middle", "slow") and calls == {}  # building it loads nothing
    assert registry.select() == ("middle", "module middle")  # the first that loads
    assert registry.active() == "middle"
    assert registry.available() == {
        "fast": "ImportError: libfast.so: cannot open shared object file",
        "middle": "available",
        "slow": "available",
    }
    registry.select()
    assert calls == {"fast": 1, "middle": 1, "slow": 1}  # each loader ran once, failures included


def test_registry_honours_the_environment_variable_and_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry({})
    for value in ("slow", " SLOW ", "Slow"):
        monkeypatch.setenv(ENV, value)
        assert registry.select() == ("slow", "module slow") and registry.active() == "slow"
    assert registry.select("middle")[0] == "middle"  # the argument wins over the variable
    for auto in ("", "auto", "AUTO"):
        monkeypatch.setenv(ENV, auto)
        assert registry.requested() is None and registry.active() == "middle"


def test_registry_refuses_an_unknown_name_saying_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry({})
    monkeypatch.setenv(ENV, "opencl")
    with pytest.raises(ValueError) as env_error:
        registry.select()
    assert str(env_error.value) == (
        "unknown test backend 'opencl' (from the environment variable BRCD_TEST_BACKEND); "
        "choose one of fast, middle, slow or auto"
    )
    with pytest.raises(ValueError, match=r"unknown test backend 'gpu' \(from the backend argument\)"):
        registry.select("gpu")


def test_registry_reports_why_a_requested_backend_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry({})
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(RuntimeError) as error:
        registry.select()
    assert str(error.value) == (
        "test backend 'fast' was requested by the environment variable BRCD_TEST_BACKEND but is not available: "
        "ImportError: libfast.so: cannot open shared object file"
    )
    assert registry.status("fast").startswith("ImportError: libfast.so")
    assert registry.loaded("fast") is None and registry.loaded("slow") == "module slow"


def test_registry_precondition_blocks_every_backend_but_keeps_what_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    reason: list[Optional[str]] = ["no test device visible"]
    registry = _registry({}, precondition=lambda: reason[0])
    assert registry.available() == {
        "fast": "no test device visible (ImportError: libfast.so: cannot open shared object file)",
        "middle": "no test device visible (backend loaded)",
        "slow": "no test device visible (backend loaded)",
    }
    assert registry.active() is None and registry.blocked() == "no test device visible"
    with pytest.raises(RuntimeError, match="no test backend can run: no test device visible"):
        registry.select()
    monkeypatch.setenv(ENV, "opencl")
    with pytest.raises(ValueError, match="unknown test backend"):  # a bad name is reported first
        registry.select()
    monkeypatch.delenv(ENV)
    reason[0] = None
    assert registry.active() == "middle" and registry.available()["middle"] == "available"


# -- the three dispatchers share it -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "registry, kind, env_var, names",
    [
        (dispatch.REGISTRY, "kernel", "BRCD_KERNEL_BACKEND", ("native", "numba", "reference")),
        (cuda.REGISTRY, "GPU", "BRCD_GPU_BACKEND", ("cuda", "cupy", "torch")),
        (mih.REGISTRY, "lookup", "BRCD_MIH_BACKEND", ("native", "reference")),
        (jpeg_eighth.REGISTRY, "JPEG decoder", "BRCD_JPEG_DECODER", ("native", "pillow")),
    ],
)
def test_each_dispatch_is_a_registry(
    registry: BackendRegistry, kind: str, env_var: str, names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (registry.kind, registry.env_var, registry.names) == (kind, env_var, names)
    monkeypatch.setenv(env_var, "nonsense")
    with pytest.raises(ChoiceError, match=f"unknown {kind} backend 'nonsense' .*{env_var}.*{', '.join(names)} or auto"):
        registry.select()
    with pytest.raises(ChoiceError, match=f"{env_var} takes"):
        with registry.forced("nonsense"):
            pass
    before = os.environ[env_var]
    with registry.forced(names[-1]):
        assert os.environ[env_var] == names[-1]
    assert os.environ[env_var] == before


def test_lookup_backend_requested_but_missing_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = BackendRegistry("lookup", mih.ENV_VAR, {"native": _raise_import_error, "reference": lambda: None})
    monkeypatch.setattr(mih, "REGISTRY", broken)
    assert mih.available_backends()["native"] == "ImportError: not built"
    assert mih.native_features() is None
    codes = np.zeros((4, 8), np.uint8)
    assert mih.MultiIndex(64, mih.build_tables(codes)).backend == "reference"
    monkeypatch.setenv(mih.ENV_VAR, "native")
    with pytest.raises(UnavailableError, match="'native' was requested by the environment variable BRCD_MIH_BACKEND"):
        mih.build_tables(codes)


def _raise_import_error() -> Any:
    raise ImportError("not built")


def test_dense_path_reads_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss's similarity and its CUDA kernels refuse an unknown backend name as the packed operations do."""
    import torch

    from brcd_cli import kernels

    a = torch.ones(2, 8)
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda-magic'"):
        kernels.masked_similarity(a, a)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert torch.equal(kernels.masked_similarity(a, a), torch.ones(2, 2))
    monkeypatch.setenv(cuda.ENV_VAR, "opencl")
    with pytest.raises(ValueError, match="unknown GPU backend 'opencl'"):
        cuda._dense_launcher()
    monkeypatch.setenv(cuda.ENV_VAR, "torch")  # the op's torch implementation, no fused kernels
    assert cuda._dense_launcher() is None


def test_info_shows_every_registry(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_cli

    monkeypatch.setenv(mih.ENV_VAR, "reference")
    monkeypatch.setenv(dispatch.ENV_VAR, "no-such-backend")  # shown as the reason, not a crash of the report
    code, out, _ = run_cli(["info", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    lookup = info["lookup_dispatch"]
    assert lookup["order"] == "native > reference" and lookup["env_var"] == "BRCD_MIH_BACKEND=reference"
    assert lookup["active"] == "reference" and lookup["reference"] == "available"
    assert info["cpu_dispatch"]["active"].startswith("none (unknown kernel backend 'no-such-backend'")
    assert info["kernel_backend_in_use"] == info["cpu_dispatch"]["active"]
    gpu = info["gpu_dispatch"]
    assert gpu["order"] == "cuda > cupy > torch" and set(gpu) == {"order", "env_var", "cuda", "cupy", "torch", "active"}
    assert gpu["active"] == (cuda.active_gpu_backend() or "none (no CUDA device visible)")


@pytest.mark.parametrize("variable, value, words", [
    ("BRCD_KERNEL_BACKEND", "gpu", "unknown kernel backend 'gpu'"),
    ("BRCD_SIMD", "mmx", "unknown SIMD path 'mmx'"),
    ("BRCD_AVX2_STEP", "tall", "unknown AVX2 step shape 'tall'"),
    ("BRCD_JPEG_DECODER", "turbo", "unknown JPEG decoder backend 'turbo'"),
    ("BRCD_MIH_BACKEND", "gpu", "unknown lookup backend 'gpu'"),
])
def test_a_bad_backend_variable_is_one_error_line_in_any_command(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    variable: str, value: str, words: str,
) -> None:
    """Whichever dispatch reads it (the scan, its C++ SIMD choice, the decoder, the lookup), the CLI says one line."""
    from conftest import run_cli

    if variable in ("BRCD_SIMD", "BRCD_AVX2_STEP") and not NATIVE:
        pytest.skip("the native scan reads the SIMD variables")
    if variable == "BRCD_JPEG_DECODER" and jpeg_eighth.REGISTRY.status("native") != "available":
        pytest.skip("only the native decoder's dispatch reads the variable")
    codes = tmp_path / "c.bin"
    assert run_cli(["encode", str(image_folder), "--model", "perceptual:dct64", "--out", str(codes)], capsys)[0] == 0
    query = sorted(image_folder.rglob("*.jpg"))[0]
    monkeypatch.setenv(variable, value)
    commands = {
        "BRCD_JPEG_DECODER": ["encode", str(image_folder), "--model", "perceptual:dct64", "--out", str(tmp_path / "d.bin")],
        "BRCD_MIH_BACKEND": ["index", str(codes), "--out", str(tmp_path / "d.mih")],
    }
    args = commands.get(variable, ["search", str(query), "--codes", str(codes), "--model", "perceptual:dct64", "-k", "3"])
    code, out, err = run_cli(args, capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err and variable in err
    assert not (tmp_path / "d.bin").exists() and not (tmp_path / "d.mih").exists()


def test_every_registry_error_is_a_backend_error() -> None:
    """One ``except`` in the CLI covers them: unknown names are ValueErrors, unusable backends RuntimeErrors."""
    assert issubclass(ChoiceError, BackendError) and issubclass(ChoiceError, ValueError)
    assert issubclass(UnavailableError, BackendError) and issubclass(UnavailableError, RuntimeError)
    if NATIVE:
        import brcd_cli._hamming_cpu as scan
        import brcd_cli._mih_cpu as lookup

        assert issubclass(scan.ChoiceError, ChoiceError) and issubclass(lookup.ChoiceError, ChoiceError)


# -- one import direction -----------------------------------------------------------------------------------------


def _kernel_imports(path: Path) -> set[str]:
    """The kernels modules ``path`` imports, at the top or inside a function (``from . import x``, ``from .x import``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and isinstance(arg.values[-1], ast.Constant):
                found.add(str(arg.values[-1].value).lstrip("."))
    return found


def test_kernel_modules_import_each_other_one_way() -> None:
    graph = {p.stem: _kernel_imports(p) for p in KERNELS.glob("*.py") if p.stem != "__init__"}
    assert "dense_ops" not in graph["cuda"] and "cuda" in graph["dense_ops"]  # the circle that used to be

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            assert nxt not in path, f"import circle: {' -> '.join(path + [nxt])}"
            visit(nxt, path + [nxt])

    for module in graph:
        visit(module, [module])


# -- BRCD_SIMD: one parser in C++ for the scan and the lookup ------------------------------------------------------

NATIVE = dispatch.available_backends()["native"] == "available" and mih.available_backends()["native"] == "available"
needs_native = pytest.mark.skipif(not NATIVE, reason="native scan or lookup extension not built")

_BOTH_ERRORS = """
import json
import numpy as np
from brcd_cli import kernels
from brcd_cli.kernels import mih
from brcd_cli.kernels._registry import ChoiceError

codes = np.arange(64, dtype=np.uint8).reshape(8, 8)
errors = {}
for name, call in (
    ("scan", lambda: kernels.knn(codes, codes, 2, backend="native")),
    ("lookup", lambda: mih.MultiIndex(64, mih.build_tables(codes, backend="native"), backend="native").knn(codes, 2)),
):
    try:
        call()
        errors[name] = None
    except ChoiceError as exc:  # the registries' error, raised by the C++ side too
        errors[name] = str(exc)
features = {"scan": kernels.native_features()["simd_path"], "lookup": mih.native_features()["path"]}
print(json.dumps({"errors": errors, "features": features}))
"""


def _in_subprocess(simd: str) -> dict[str, Any]:
    """The scan's and the lookup's answer to BRCD_SIMD=simd, from a fresh process that has it from the start."""
    env = {**os.environ, "BRCD_SIMD": simd}
    res = subprocess.run([sys.executable, "-c", _BOTH_ERRORS], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_native
def test_unknown_simd_value_is_the_same_clear_error_in_scan_and_lookup() -> None:
    out = _in_subprocess("sse9")
    expected = (
        "unknown SIMD path 'sse9' (from environment variable BRCD_SIMD); "
        "choose one of scalar, popcnt, avx2, avx512, or auto (or empty) for the best this CPU has"
    )
    assert out["errors"] == {"scan": expected, "lookup": expected}
    # The reports say what is wrong instead of failing (brcd info stays usable).
    assert out["features"] == {"scan": f"none ({expected})", "lookup": f"none ({expected})"}


@needs_native
@pytest.mark.parametrize("simd, scan_path, lookup_path", [("AVX2 ", "avx2", "popcnt"), ("scalar", "scalar", "scalar"),
                                                          ("", None, None)])
def test_simd_value_maps_to_each_modules_build(simd: str, scan_path: Optional[str], lookup_path: Optional[str]) -> None:
    """avx2 runs the scan's avx2 build and the lookup's popcnt build (it has no avx2 one); blank means the best."""
    import brcd_cli._hamming_cpu as scan
    import brcd_cli._mih_cpu as lookup

    if simd.strip().lower() == "avx2" and not lookup.cpu_features()["cpu_avx2"]:
        pytest.skip("this CPU has no AVX2")
    out = _in_subprocess(simd)
    assert out["errors"] == {"scan": None, "lookup": None}
    best_scan = scan.cpu_features()["simd_paths_supported"][0]
    best_lookup = lookup.cpu_features()["paths_supported"][0]
    assert out["features"] == {"scan": scan_path or best_scan, "lookup": lookup_path or best_lookup}


@needs_native
def test_simd_level_this_cpu_cannot_run_is_refused_by_both() -> None:
    import brcd_cli._hamming_cpu as scan

    supported = scan.cpu_features()["simd_paths_supported"]
    missing = [p for p in ("avx512", "avx2", "popcnt") if p not in supported]
    if not missing:
        pytest.skip("this CPU runs every SIMD level")
    out = _in_subprocess(missing[0])
    expected = (
        f"SIMD path '{missing[0]}' (from environment variable BRCD_SIMD) needs instructions this CPU lacks; "
        f"it can run {', '.join(supported)}"
    )
    assert out["errors"] == {"scan": expected, "lookup": expected}
