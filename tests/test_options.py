"""Options check themselves by field name; the CLI names the flag; enumerated choices are refused by click."""
from __future__ import annotations

from pathlib import Path

import pytest

from brcd_cli.errors import ModelError, OptionError
from brcd_cli.models import ModelConfig
from brcd_cli.training import DistillOptions, FitOptions, TeacherOptions
from conftest import run_cli


@pytest.mark.parametrize(
    "make,field,words",
    [
        (lambda: FitOptions(epochs=0), "epochs", "epochs >= 1 is required, got 0"),
        (lambda: FitOptions(batch_size=1), "batch_size", ">= 2"),
        (lambda: FitOptions(lr=0), "lr", "must be positive"),
        (lambda: FitOptions(time_budget=-5), "time_budget", "must be positive"),
        (lambda: TeacherOptions(bits=12), "bits", "bits must be one of 8, 16"),
        (lambda: TeacherOptions(image_size=4), "image_size", "must be in 8..1024"),
        (lambda: TeacherOptions(head="conv"), "head", "must be one of linear, mlp"),
        (lambda: TeacherOptions(augment="jitter"), "augment", "must be one of photo, digits, none"),
        (lambda: DistillOptions(method="sskd"), "method", "must be one of brcd, none"),
        (lambda: DistillOptions(mask_rule="random"), "mask_rule", "must be one of consistent, opposite"),
        (lambda: DistillOptions(alpha=1.5), "alpha", "must be in 0..1"),
        (lambda: DistillOptions(clusters=0), "clusters", ">= 1"),
        (lambda: DistillOptions(cache_views=1), "cache_views", "two views"),
        (lambda: DistillOptions(hidden=0), "hidden", ">= 1"),
    ],
)
def test_options_refuse_bad_values_naming_the_field(make, field: str, words: str) -> None:
    with pytest.raises(OptionError, match=words) as info:
        make()
    assert info.value.field == field


def test_a_student_takes_its_bits_from_the_teacher_and_a_config_shares_the_rules() -> None:
    assert DistillOptions(image_size=None, augment=None).image_size is None  # the teacher's, checked when known
    with pytest.raises(ModelError, match="bits must be one of"):
        ModelConfig.from_dict({"arch": "resnet18", "bits": 12, "image_size": 32})


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["train-teacher", "synthetic:8", "--lr", "0", "--out", "{tmp}/t"], 1, "error: --lr must be positive, got 0.0"),
        (["train-teacher", "synthetic:8", "--time-budget", "-1", "--out", "{tmp}/t"], 1, "error: --time-budget must be positive"),
        (["train-teacher", "synthetic:8", "--head", "conv", "--out", "{tmp}/t"], 2, "Invalid value for '--head'"),
        (["distill", "synthetic:8", "--teacher", "{tmp}/t", "--cache-views", "1"], 1, "error: --cache-views must be at least 2"),
        (["distill", "synthetic:8", "--teacher", "{tmp}/t", "--mask-rule", "random"], 2, "'consistent', 'opposite'"),
        (["distill", "synthetic:8", "--teacher", "{tmp}/t", "--method", "sskd"], 2, "Invalid value for '--method'"),
        (["bench", "loss-kernel", "--device", "cpu"], 2, "Invalid value for '--device'"),
    ],
)
def test_cli_reports_the_flag_in_one_line(args, code: int, words: str, tmp_path: Path, capsys) -> None:
    got, out, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert got == code and words in err and len(err.strip().splitlines()) == 1 and out == ""
    assert not (tmp_path / "t").exists()
