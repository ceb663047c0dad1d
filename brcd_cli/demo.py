"""``brcd demo``: the whole pipeline on the embedded digits in a few minutes on a laptop CPU.

Without pretrained weights (none can be downloaded here) the demo trains a
small CNN teacher from scratch, which learns usable codes on digits in a
couple of minutes where a ViT would not; the paper's setting (pretrained
ViT-B/16 teacher, EfficientNet-B0 student) remains the CLI default.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from .atomic import atomic_write_json
from .data import digits_source, make_split, preload
from .errors import BrcdError
from .evaluation.protocol import evaluate_models
from .models import HashModel
from .options import positive
from .pipeline import encode_collection, search_image
from .training import DistillOptions, FitOptions, TeacherOptions, distill, train_teacher

DEMO_FILE = "demo.json"
TEACHER_ARCH, STUDENT_ARCH = "resnet18", "mobilenetv3_small_050"
BITS, SIZE = 64, 32
# Fixed epoch counts make the demo's numbers the same on any machine; the time caps only guard the
# 10-minute promise on a slow or busy one (about 11 s per teacher epoch and 9 s per student epoch here).
TEACHER_EPOCHS, STUDENT_EPOCHS = 18, 12
TEACHER_CAP_SECONDS, STUDENT_CAP_SECONDS = 260.0, 150.0


def images_per_second(model: HashModel, images: torch.Tensor, batch_size: int = 256, repeats: int = 3) -> float:
    """Encoding throughput of the network alone (decoded images in memory), best of a few runs.

    Measured on a copy prepared as ``brcd encode`` loads a model (channels-last inference).
    """
    model = copy.deepcopy(model).prepare_for_inference()
    x = images.float().div(255.0)
    best = float("inf")
    with torch.no_grad():
        model.codes(x[:batch_size])  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for start in range(0, x.shape[0], batch_size):
                model.codes(x[start : start + batch_size])
            best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def _prepare(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / DEMO_FILE).exists())):
        raise BrcdError(f"{out} exists and is not a brcd demo folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def run_demo(out: Path, budget: float = 1.0, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Teacher, BRCD student, student alone, evaluation, encode and one search; returns the report."""
    positive("budget", budget)
    out = Path(out)
    _prepare(out)
    t_start = time.monotonic()
    source = digits_source()
    log(f"brcd demo: {len(source)} real handwritten digits (scikit-learn), {BITS}-bit codes, outputs in {out}")

    def fit(epochs: int, cap: float) -> FitOptions:
        return FitOptions(epochs=max(1, round(epochs * budget)), batch_size=64, lr=1e-3, patience=20,
                          time_budget=cap * budget, seed=seed)

    log(f"[1/5] teacher: CIBHash on {TEACHER_ARCH} from scratch")
    teacher = train_teacher(
        source, out / "teacher",
        TeacherOptions(arch=TEACHER_ARCH, bits=BITS, image_size=SIZE, pretrained="none", seed=seed, fit=fit(TEACHER_EPOCHS, TEACHER_CAP_SECONDS)),
        force=True, log=log,
    )
    student_opts = dict(arch=STUDENT_ARCH, image_size=SIZE, pretrained="none", hidden=512, seed=seed)
    log(f"[2/5] student: BRCD distillation into {STUDENT_ARCH}")
    student = distill(source, out / "teacher", out / "student", DistillOptions(method="brcd", fit=fit(STUDENT_EPOCHS, STUDENT_CAP_SECONDS), **student_opts), force=True, log=log)
    log(f"[3/5] the same student trained alone (CIBHash, no teacher)")
    alone = distill(source, out / "teacher", out / "student-alone", DistillOptions(method="none", fit=fit(STUDENT_EPOCHS, STUDENT_CAP_SECONDS), **student_opts), force=True, log=log)

    log("[4/5] evaluating on the held-out test queries")
    with_teacher = evaluate_models(source, teacher.model, student.model, seed=seed, log=log)
    without = evaluate_models(source, teacher.model, alone.model, seed=seed, log=log)
    split = make_split(source, seed=seed)
    sample = preload(source, split.database[:1024], SIZE)
    report: dict[str, Any] = {
        "map_teacher": with_teacher["map_teacher"],
        "map_ashp": with_teacher["map_ashp"],
        "map_sshp": with_teacher["map_sshp"],
        "map_no_distill": without["map_sshp"],
        "map_no_distill_ashp": without["map_ashp"],
        "map_tie_aware": {k: v for k, v in with_teacher.items() if k.startswith("map_tie_aware")},
        "p_r2": {k: v for k, v in with_teacher.items() if k.startswith("p_r2")},
        "queries": with_teacher["queries"],
        "database": with_teacher["database"],
        "bits": BITS,
        "teacher_arch": TEACHER_ARCH,
        "student_arch": STUDENT_ARCH,
        "teacher_images_per_s": images_per_second(teacher.model, sample),
        "student_images_per_s": images_per_second(student.model, sample),
        "teacher_params": sum(p.numel() for p in teacher.model.parameters()),
        "student_params": sum(p.numel() for p in student.model.parameters()),
        "train_seconds": {
            "teacher": teacher.result.seconds, "student": student.result.seconds, "student_alone": alone.result.seconds,
        },
    }
    report["encode_speedup"] = report["student_images_per_s"] / report["teacher_images_per_s"]

    log("[5/5] encoding all digits with the teacher and searching with the student (ASHP)")
    codes = out / "digits-teacher.codes"
    encode_collection(source, out / "teacher", codes, overwrite=True, log=log)
    qi = int(split.test_queries[0])
    query = out / "query.png"
    source.load(qi).save(query)
    hits = search_image(query, codes, out / "student", k=5)
    report["example_search"] = {"query": source.ids[qi], "results": [h.to_dict() for h in hits]}
    report["codes_file"] = str(codes)
    report["outputs"] = {"teacher": str(out / "teacher"), "student": str(out / "student"), "student_alone": str(out / "student-alone")}
    report["seconds"] = time.monotonic() - t_start
    atomic_write_json(out / DEMO_FILE, report)
    return report


def print_report(report: dict[str, Any]) -> None:
    """The demo's one table, then the example search."""
    rows = [
        ("teacher (teacher-teacher)", report["map_teacher"], report["teacher_images_per_s"]),
        ("BRCD student, ASHP (student query, teacher db)", report["map_ashp"], report["student_images_per_s"]),
        ("BRCD student, SSHP (student both sides)", report["map_sshp"], report["student_images_per_s"]),
        ("student alone, no distillation (SSHP)", report["map_no_distill"], report["student_images_per_s"]),
    ]
    print(f"\ndigits, {report['bits']} bits, {report['queries']} test queries vs {report['database']} database images (mAP over the whole ranking)")
    print(f"{'':50s} {'mAP':>7s} {'encode img/s':>13s}")
    for name, value, speed in rows:
        print(f"{name:50s} {value:7.4f} {speed:13.0f}")
    ratio = report["encode_speedup"]
    pace = f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"
    print(f"student encodes {pace} the teacher on this machine "
          f"({report['student_arch']} {report['student_params'] / 1e6:.2f}M vs {report['teacher_arch']} {report['teacher_params'] / 1e6:.2f}M params)")
    ex = report["example_search"]
    print(f"\nexample search (student-encoded query {ex['query']} against {report['codes_file']}):")
    for h in ex["results"]:
        print(f"{h['rank']:>4}  {h['distance']:>3}  {h['id']}")
    print(f"\ndone in {report['seconds']:.0f}s; models and codes are in {Path(report['codes_file']).parent}")
