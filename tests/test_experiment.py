"""brcd experiment on a tiny synthetic grid: cells, resumption, teachers per bit length, report and plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from brcd_cli.data import synthetic_source
from brcd_cli.errors import BrcdError
from brcd_cli.experiment import ExperimentOptions, find_teachers, parse_bits, parse_methods, run_experiment
from brcd_cli.experiment.report import summarise
from brcd_cli.training import DistillOptions, FitOptions, TeacherOptions
from conftest import TINY_ARCH, run_cli

QUIET = lambda message: None  # noqa: E731
METHODS = ["none", "brcd", "brcd-no-mask"]


def tiny_options(**kw) -> ExperimentOptions:
    return ExperimentOptions(
        bits=kw.pop("bits", [8, 16]), seeds=2, methods=METHODS,
        teacher_options=TeacherOptions(arch=TINY_ARCH, image_size=16, pretrained="none", fit=FitOptions(epochs=1, batch_size=16)),
        student=DistillOptions(arch=TINY_ARCH, pretrained="none", freeze_backbone=True, hidden=16, clusters=None, max_clusters=3,
                               cache_views=2, fit=FitOptions(epochs=1, batch_size=16)),
        command="brcd experiment synthetic (test)", **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Dozens of tiny steps: on a shared 2-core machine a second thread only waits for the first."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("exp") / "report"
    summary = run_experiment(synthetic_source(n=48, n_classes=4, size=16), out, tiny_options(), log=QUIET)
    return out, summary


def test_grid_writes_every_cell_results_and_plots(grid):
    out, summary = grid
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(METHODS) * 2 * 2 == summary["cells"]
    assert {(r["method"], r["bits"], r["seed"]) for r in rows} == {(m, b, s) for m in METHODS for b in ("8", "16") for s in ("0", "1")}
    for r in rows:
        assert 0.0 <= float(r["map_ashp"]) <= 1.0 and 0.0 <= float(r["map_sshp"]) <= 1.0
        assert r["feature_cache"] == "True"
    for name in ("map_vs_bits.png", "pr_curves.png", "bit_consistency.png", "silhouette.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| teacher (bound) |" in md and "ASHP 8" in md and "SSHP 16" in md and "**" in md
    assert "## Where BRCD ranks" in md and "## What each ablation changes" in md and "brcd experiment synthetic (test)" in md
    assert (out / "teachers" / "8" / "config.json").is_file() and (out / "teachers" / "16.json").is_file()
    # the closed-form floors are scored beside each teacher, on the teacher's backbone and split
    assert "| LSH on the teacher's features (floor) |" in md and "| ITQ on the teacher's features (floor) |" in md
    for b in (8, 16):
        record = json.loads((out / "teachers" / f"{b}.json").read_text())
        assert 0.0 <= record["map_lsh"] <= 1.0 and 0.0 <= record["map_itq"] <= 1.0
        assert json.loads((out / "floors" / "itq" / str(b) / "run.json").read_text())["result"]["stopped"] == "closed-form"


def test_student_alone_has_no_ashp_entry_and_best_is_marked_per_column(grid):
    out, _ = grid
    cells = [json.loads(p.read_text()) for p in (out / "cells").rglob("cell.json")]
    summary = summarise(cells)
    assert ("none", 8, "ashp") not in summary and ("none", 8, "sshp") in summary
    assert summary[("brcd", 16, "sshp")][2] == 2  # two seeds per mean
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| none |"))
    assert row.split("|")[2].strip() == "–"
    best = max(summary[(m, 16, "sshp")][0] for m in METHODS)
    col = 4 + 1  # | method | ASHP 8 | ASHP 16 | SSHP 8 | SSHP 16 |
    bold_rows = [line.split("|")[1].strip() for line in (out / "results.md").read_text().splitlines()
                 if line.startswith("| ") and not line.startswith("| teacher") and "**" in line.split("|")[col]]
    assert bold_rows and all(abs(summary[(m, 16, "sshp")][0] - best) < 1e-9 for m in bold_rows if (m, 16, "sshp") in summary)


def test_rerun_skips_finished_cells(grid):
    out, _ = grid
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("cell.json")}
    messages: list[str] = []
    run_experiment(synthetic_source(n=48, n_classes=4, size=16), out, tiny_options(), log=messages.append)
    assert sum("skipped" in m for m in messages) == len(before)
    assert not any("training" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads((out / "experiment.json").read_text())["sessions"] == 2


def test_given_teachers_per_bit_length_are_used_and_a_single_teacher_must_match(grid, tmp_path: Path):
    out, _ = grid
    found = find_teachers(out / "teachers", [8, 16])
    assert found == {8: out / "teachers" / "8", 16: out / "teachers" / "16"}
    assert find_teachers(out / "teachers" / "8", [8]) == {8: out / "teachers" / "8"}
    with pytest.raises(BrcdError, match="one teacher per bit length"):
        find_teachers(out / "teachers" / "8", [8, 16])
    with pytest.raises(BrcdError, match="no teacher for 32 bits"):
        find_teachers(out / "teachers", [8, 32])
    opts = tiny_options(bits=[8], teacher=out / "teachers")
    opts.methods, opts.seeds = ["kd"], 1
    run_experiment(synthetic_source(n=48, n_classes=4, size=16), tmp_path / "r", opts, log=QUIET)
    assert not (tmp_path / "r" / "teachers" / "8").exists()
    assert json.loads((tmp_path / "r" / "teachers" / "8.json").read_text())["teacher"] == str(out / "teachers" / "8")


def test_method_and_bit_lists_are_checked():
    assert parse_methods("all")[:2] == ["none", "brcd"] and len(parse_methods("all")) == 12
    assert parse_methods("ablations") == ["brcd", "brcd-no-fn", "brcd-no-fp", "brcd-no-mask", "brcd-opposite-mask"]
    assert parse_methods("kd,kd,sp") == ["kd", "sp"]
    with pytest.raises(BrcdError, match="unknown method 'sskd'"):
        parse_methods("brcd,sskd")
    assert parse_bits("16,32,64") == [16, 32, 64]
    with pytest.raises(BrcdError):
        parse_bits("12")


def test_cli_usage_errors_are_one_line(tmp_path: Path, capsys):
    code, _, err = run_cli(["experiment", "digits", "--out", str(tmp_path / "r"), "--bits", "16,33"], capsys)
    assert code != 0 and err.count("\n") == 1 and "--bits" in err
    code, _, err = run_cli(["experiment", "digits", "--out", str(tmp_path / "r"), "--methods", "brcd,magic"], capsys)
    assert code != 0 and "unknown method 'magic'" in err
