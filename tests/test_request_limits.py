"""What a search request may ask: k or a radius (not both), k within what the kernels take, any radius; the serve
port's range; and the advice after Ctrl-C, which names only a way to continue that the command has."""
from __future__ import annotations

from pathlib import Path

import pytest

from brcd_cli.cli import _interrupted
from brcd_cli.errors import OptionError
from brcd_cli.search import request_of
from brcd_cli.search.base import DEFAULT_K, MAX_K
from conftest import run_cli


@pytest.fixture
def encoded(image_folder: Path, tmp_path: Path, capsys) -> tuple[Path, Path]:
    """A codes file of the real image folder (a perceptual hasher: nothing to train) and one query image."""
    codes = tmp_path / "c.bin"
    assert run_cli(["encode", str(image_folder), "--model", "perceptual:dct64", "--out", str(codes)], capsys)[0] == 0
    return codes, sorted(image_folder.rglob("*.jpg"))[0]


def _search(encoded: tuple[Path, Path], capsys, *flags: str) -> tuple[int, str, str]:
    codes, query = encoded
    return run_cli(["search", str(query), "--codes", str(codes), "--model", "perceptual:dct64", *flags], capsys)


def test_request_of_defaults_k_and_refuses_both() -> None:
    assert request_of(None, None) == (DEFAULT_K, None)
    assert request_of(3, None) == (3, None) and request_of(None, 0) == (None, 0)
    with pytest.raises(OptionError, match="cannot be given with a radius"):
        request_of(3, 2)
    with pytest.raises(OptionError, match="at most"):
        request_of(MAX_K + 1, None)


def test_search_refuses_k_with_a_radius_and_a_k_beyond_the_kernels(encoded, capsys) -> None:
    code, out, err = _search(encoded, capsys, "-k", "3", "--radius", "2")
    assert code == 1 and err.strip() == "error: -k cannot be given with a radius: a radius search returns every code within it"
    code, out, err = _search(encoded, capsys, "-k", str(2**63))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "-k must be at most 2,147,483,647" in err
    assert "Traceback" not in err


def test_any_radius_and_any_k_up_to_the_limit_find_every_item(encoded, capsys) -> None:
    code, everything, _ = _search(encoded, capsys, "--radius", "64")
    assert code == 0 and everything.strip()
    for flags in (["--radius", str(2**63)], ["-k", str(MAX_K)]):
        code, out, err = _search(encoded, capsys, *flags)
        assert code == 0, err
        assert sorted(out.splitlines()) == sorted(everything.splitlines())


@pytest.mark.parametrize("port", ["-1", "65536", "70000"])
def test_serve_port_out_of_range_is_a_usage_error(encoded, capsys, port: str) -> None:
    codes, _ = encoded
    code, _, err = run_cli(["serve", "--codes", str(codes), "--model", "perceptual:dct64", "--port", port], capsys)
    assert code == 2 and "--port" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, advice", [
    (["encode", "pics/", "--out", "c.bin"], "interrupted; rerun the same command with --resume to continue"),
    (["encode", "pics/", "--out", "c.bin", "--update"], "interrupted; rerun the same command to continue the update"),
    (["train-teacher", "pics/"], "interrupted; rerun the same command with --resume to continue"),
    (["distill", "pics/", "--teacher", "t"], "interrupted; rerun the same command with --resume to continue"),
    (["demo"], "interrupted"),
    (["search", "q.jpg"], "interrupted"),
    (["--help"], "interrupted"),
])
def test_the_advice_after_ctrl_c_is_what_the_command_takes(args: list[str], advice: str) -> None:
    assert _interrupted(args) == advice
