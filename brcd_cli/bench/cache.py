"""`brcd bench distill-cache`: distillation from the frozen-feature cache against the same run without it.

Both sides train the same student (same method, seeds, data, split, epochs,
no early stopping so the epoch counts match) against the same frozen teacher,
in the same process; only where the frozen forwards come from differs. The
report gives seconds per epoch of each (the median over epochs after the
first, validation included, as a user waits for it), their ratio, the
one-off cost of building the cache, and the test-query mAP
of both in ASHP and SSHP, so that speed is never shown without the quality
it costs. Both sides' quality differs for a real reason
as well as noise: the cache holds V views per image, the direct run draws a
fresh view every epoch.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..data import ImageSource
from ..errors import BrcdError
from ..evaluation.protocol import default_top_k, evaluate_models
from ..models import load_model
from ..training import DistillOptions, FitOptions, TeacherOptions, distill, train_teacher
from ..training.common import read_run_record, recorded_seed


@dataclass
class CacheBenchConfig:
    """What to compare; the student template's backbone is frozen (the cache's precondition)."""

    out: Path
    teacher: Optional[Path] = None  # None: train one into OUT/teacher with teacher_options
    teacher_options: TeacherOptions = field(default_factory=lambda: TeacherOptions(
        arch="resnet18", bits=64, image_size=32, pretrained="none", fit=FitOptions(epochs=1000, patience=1000, time_budget=120.0)))
    student: DistillOptions = field(default_factory=lambda: DistillOptions(
        arch="mobilenetv3_small_050", pretrained="none", freeze_backbone=True, hidden=512))
    epochs: int = 5
    seeds: int = 1
    views: int = 8

    def validate(self) -> None:
        if self.epochs < 1 or self.seeds < 1:
            raise BrcdError("--epochs and --seeds must be at least 1")
        if self.views < 2:
            raise BrcdError(f"--cache-views must be at least 2, got {self.views}")


def seconds_per_epoch(history: list[dict[str, float]]) -> float:
    """Median epoch duration, leaving out the first epoch (it pays one-off warm-up) when there are others.

    The median, because other processes on a shared machine make single epochs slow at random."""
    ends = [0.0] + [float(row["seconds"]) for row in history]
    durations = np.diff(ends)
    return float(np.median(durations[1:] if len(durations) > 1 else durations))


def run_cache_bench(source: ImageSource, config: CacheBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train with and without the cache for each seed; returns per-epoch times, their ratio and both mAPs."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = config.teacher
    if teacher_dir is None:
        teacher_dir = out / "teacher"
        record = read_run_record(teacher_dir)
        if record is None or record.get("state") != "done":
            log(f"training a {config.teacher_options.arch} teacher into {teacher_dir}")
            train_teacher(source, teacher_dir, config.teacher_options, force=True, log=lambda m: None)
    teacher, _ = load_model(teacher_dir)
    split_seed = recorded_seed(teacher_dir) or 0
    sides: dict[str, dict[str, list[float]]] = {"cache": {}, "direct": {}}
    for seed in range(config.seeds):
        for side in ("direct", "cache"):
            folder = out / f"{side}-seed{seed}"
            cache_dir = out / f"feature-cache-seed{seed}"
            if side == "cache":
                shutil.rmtree(cache_dir, ignore_errors=True)  # the build is timed, so never reuse an old one
            options = replace(
                config.student, seed=seed, split_seed=split_seed, feature_cache=side == "cache", cache_views=config.views,
                cache_dir=cache_dir, fit=replace(config.student.fit, epochs=config.epochs, patience=config.epochs + 1,
                                                 time_budget=None, seed=seed, save_every=1e9),
            )
            t0 = time.monotonic()
            trained = distill(source, teacher_dir, folder, options, force=True, log=lambda m: None)
            total = time.monotonic() - t0
            per_epoch = seconds_per_epoch(trained.result.history)
            scores = evaluate_models(source, teacher, trained.model, seed=split_seed, top_k=default_top_k(source), log=lambda m: None)
            row = sides[side]
            for key, value in (("seconds_per_epoch", per_epoch), ("setup_seconds", total - trained.result.seconds),
                               ("map_ashp", scores["map_ashp"]), ("map_sshp", scores["map_sshp"])):
                row.setdefault(key, []).append(float(value))
            log(f"seed {seed} {side:6s}: {per_epoch:.3f} s/epoch, setup {total - trained.result.seconds:.1f}s, "
                f"test mAP ASHP {scores['map_ashp']:.4f} SSHP {scores['map_sshp']:.4f}")
    mean = {side: {k: float(np.mean(v)) for k, v in row.items()} for side, row in sides.items()}
    return {
        "data": source.name,
        "teacher": str(teacher_dir),
        "teacher_arch": teacher.config.arch,
        "student_arch": config.student.arch,
        "method": config.student.method,
        "bits": teacher.config.bits,
        "epochs": config.epochs,
        "seeds": config.seeds,
        "views": config.views,
        "direct": mean["direct"],
        "cache": mean["cache"],
        "per_seed": sides,
        "speedup_per_epoch": mean["direct"]["seconds_per_epoch"] / mean["cache"]["seconds_per_epoch"],
        "map_ashp_diff_points": 100 * (mean["cache"]["map_ashp"] - mean["direct"]["map_ashp"]),
        "map_sshp_diff_points": 100 * (mean["cache"]["map_sshp"] - mean["direct"]["map_sshp"]),
        "note": "setup_seconds of the cache side include building the cache (teacher clustering and encoding on both sides)",
    }


def format_report(report: dict[str, Any]) -> list[str]:
    d, c = report["direct"], report["cache"]
    return [
        f"{report['data']}: {report['method']} distillation of {report['teacher_arch']} ({report['bits']} bits) into a frozen "
        f"{report['student_arch']}, {report['epochs']} epochs x {report['seeds']} seed(s), {report['views']} cached views",
        f"direct  {d['seconds_per_epoch']:8.3f} s/epoch  setup {d['setup_seconds']:6.1f}s  mAP ASHP {d['map_ashp']:.4f}  SSHP {d['map_sshp']:.4f}",
        f"cache   {c['seconds_per_epoch']:8.3f} s/epoch  setup {c['setup_seconds']:6.1f}s  mAP ASHP {c['map_ashp']:.4f}  SSHP {c['map_sshp']:.4f}",
        f"speedup per epoch {report['speedup_per_epoch']:.1f}x; mAP change with the cache: ASHP "
        f"{report['map_ashp_diff_points']:+.2f} points, SSHP {report['map_sshp_diff_points']:+.2f} points",
    ]
