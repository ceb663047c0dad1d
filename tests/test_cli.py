"""The brcd command line end to end on small data, and its answers to user mistakes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_ARCH, run_cli

TRAIN = ["--arch", TINY_ARCH, "--image-size", "16", "--pretrained", "none", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A teacher, a distilled student and a student alone, trained through the CLI on synthetic data."""
    root = tmp_path_factory.mktemp("cli")
    assert run_cli(["train-teacher", "synthetic:64", "--bits", "16", "--out", str(root / "teacher"), *TRAIN])[0] == 0
    assert run_cli(["distill", "synthetic:64", "--teacher", str(root / "teacher"), "--out", str(root / "student"),
                 "--clusters", "3", *TRAIN])[0] == 0
    assert run_cli(["distill", "synthetic:64", "--teacher", str(root / "teacher"), "--out", str(root / "alone"),
                 "--method", "none", *TRAIN])[0] == 0
    return root


def test_encode_then_search_asymmetric(models: Path, image_folder: Path, tmp_path: Path, capsys):
    codes = tmp_path / "codes.bin"
    code, _, err = run_cli(["encode", str(image_folder), "--model", str(models / "teacher"), "--out", str(codes)], capsys)
    assert code == 0 and "wrote 12 codes" in err
    query = image_folder / "red" / "red_2.jpg"
    code, out, _ = run_cli(["search", str(query), "--codes", str(codes), "--model", str(models / "student"), "-k", "3", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert [h["rank"] for h in doc["results"]] == [1, 2, 3]
    dists = [h["distance"] for h in doc["results"]]
    assert dists == sorted(dists) and all(0 <= d <= 16 for d in dists)
    code, out, _ = run_cli(["search", str(query), "--codes", str(codes), "--model", str(models / "teacher"), "--radius", "16"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 12  # radius = L: everything, inclusive


def test_search_matches_brute_force(models: Path, image_folder: Path, tmp_path: Path, capsys):
    from brcd_cli.codes import read_codes
    from brcd_cli.kernels import unpack_codes
    from brcd_cli.models import load_model
    from brcd_cli.pipeline import read_query_image
    from brcd_cli.encoding import codes_of_images

    codes_path = tmp_path / "c.bin"
    run_cli(["encode", str(image_folder), "--model", str(models / "teacher"), "--out", str(codes_path)], capsys)
    query = image_folder / "blue" / "blue_3.png"
    code, out, _ = run_cli(["search", str(query), "--codes", str(codes_path), "--model", str(models / "teacher"), "-k", "12", "--json"], capsys)
    got = [(h["distance"], h["index"]) for h in json.loads(out)["results"]]
    model, _ = load_model(models / "teacher")
    q = codes_of_images(model, read_query_image(query, 16)).numpy()[0]
    cf = read_codes(codes_path)
    db = unpack_codes(np.asarray(cf.codes), 16).astype(np.int64)
    brute = sorted((int((db[i] != q).sum()), i) for i in range(len(db)))
    assert got == brute


def test_evaluate_json_has_the_three_paradigms(models: Path, capsys):
    code, out, _ = run_cli(["evaluate", "synthetic:64", "--teacher", str(models / "teacher"), "--student", str(models / "student"), "--json"], capsys)
    assert code == 0
    scores = json.loads(out)
    for key in ("map_teacher", "map_ashp", "map_sshp", "map_tie_aware_teacher", "p_r2_ashp"):
        assert 0.0 <= scores[key] <= 1.0


def test_search_refuses_codes_from_another_code_space(models: Path, image_folder: Path, tmp_path: Path, capsys):
    codes = tmp_path / "codes.bin"
    run_cli(["encode", str(image_folder), "--model", str(models / "teacher"), "--out", str(codes)], capsys)
    code, out, err = run_cli(["search", str(image_folder / "red" / "red_1.png"), "--codes", str(codes), "--model", str(models / "alone")], capsys)
    assert code == 1 and err.startswith("error:") and "another code space" in err and len(err.strip().splitlines()) == 1


def test_encode_refuses_to_overwrite_without_force(models: Path, image_folder: Path, tmp_path: Path, capsys):
    codes = tmp_path / "codes.bin"
    codes.write_bytes(b"precious")
    code, _, err = run_cli(["encode", str(image_folder), "--model", str(models / "teacher"), "--out", str(codes)], capsys)
    assert code == 1 and "--force" in err and codes.read_bytes() == b"precious"
    code, _, _ = run_cli(["encode", str(image_folder), "--model", str(models / "teacher"), "--out", str(codes), "--force"], capsys)
    assert code == 0 and codes.read_bytes()[:8] == b"BRCDCODE"


@pytest.mark.parametrize(
    "args,exit_code,words",
    [
        (["train-teacher", "/no/such/data", "--out", "{tmp}/t"], 3, "data not found"),
        (["train-teacher", "synthetic:32", "--bits", "13", "--out", "{tmp}/t"], 1, "--bits must be one of"),
        (["distill", "synthetic:32", "--teacher", "{tmp}/missing", "--out", "{tmp}/s"], 4, "model folder not found"),
        (["distill", "synthetic:32", "--teacher", "{models}/teacher", "--clusters", "many", "--out", "{tmp}/s"], 1, "--clusters must be"),
        (["search", "{tmp}/nope.jpg", "--codes", "{tmp}/c.bin", "--model", "{models}/teacher"], 3, "query image not found"),
        (["search", "{bad_image}", "--codes", "{tmp}/c.bin", "--model", "{models}/teacher"], 3, "cannot read query image"),
        (["search", "{image}", "--codes", "{bad_codes}", "--model", "{models}/teacher"], 5, "{bad_codes}"),
        (["search", "{image}", "--codes", "{tmp}/c.bin", "--model", "{models}/teacher", "-k", "0"], 1, "-k must be positive"),
        (["search", "{image}", "--codes", "{tmp}/c.bin", "--model", "{models}/teacher", "--radius", "-1"], 1, "--radius must be >= 0"),
        (["encode", "{tmp}/empty", "--model", "{models}/teacher", "--out", "{tmp}/x.bin"], 3, "no images found"),
    ],
)
def test_user_mistakes_give_one_line_and_an_exit_code(models: Path, image_folder: Path, tmp_path: Path, capsys, args, exit_code, words):
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad_codes = tmp_path / "bad.codes"
    bad_codes.write_bytes(b"NOTCODES" + b"\0" * 200)
    (tmp_path / "empty").mkdir()
    good_codes = tmp_path / "c.bin"
    run_cli(["encode", str(image_folder), "--model", str(models / "teacher"), "--out", str(good_codes)], capsys)
    subst = {"{tmp}": str(tmp_path), "{models}": str(models), "{bad_image}": str(bad_image), "{bad_codes}": str(bad_codes),
             "{image}": str(image_folder / "red" / "red_0.jpg")}

    def fill(s: str) -> str:
        for k, v in subst.items():
            s = s.replace(k, v)
        return s

    code, _, err = run_cli([fill(a) for a in args], capsys)
    assert code == exit_code, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error:") and fill(words) in lines[-1]
    assert "Traceback" not in err


def test_info_lists_backends(capsys):
    code, out, _ = run_cli(["info", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["kernel_backend_in_use"] in info["kernel_backends"]
    assert info["kernel_backends"]["reference"] == "available"


def test_info_names_the_simd_path_and_honours_the_cap(capsys, monkeypatch):
    from brcd_cli import kernels

    if kernels.native_features() is None:
        pytest.skip("native kernels not built")
    monkeypatch.setenv("BRCD_SIMD", "scalar")
    code, out, _ = run_cli(["info", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["cpu_simd_scan"] == "scalar" and info["cpu_simd_lookup"] == "scalar"


def test_commands_that_need_no_network_do_not_import_torch(tmp_path: Path):
    """typer builds only the command that runs, so --method's registry (and torch) stays out of brcd index."""
    import subprocess
    import sys

    from brcd_cli.codes import write_codes

    codes = tmp_path / "c.bin"
    write_codes(codes, np.zeros((10, 2), np.uint8), [str(i) for i in range(10)], 16, "ab" * 32, "cd" * 32)
    script = ("import sys; from brcd_cli.cli import main\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "print('torch' in sys.modules, 'brcd_cli.losses' in sys.modules)")
    for args in (["index", str(codes)], ["--help"], ["bench", "--help"]):  # a group's help lists summaries only
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "False False", args


def test_the_help_lists_every_command_with_its_summary(capsys) -> None:
    """The listing comes from summaries, not built commands: it must still say what each command does."""
    from brcd_cli.cli import app

    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    listed = {line.split()[0]: line for line in out.split("Commands:")[1].splitlines() if line.strip()}
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert sorted(listed) == sorted(names)
    assert "Distil a teacher into a small student" in listed["distill"]
    assert "Export codes to a serving system" in listed["export"]
    code, out, _ = run_cli(["distill", "--help"], capsys)  # a command's own help is the built command's
    assert code == 0 and "--method" in out
