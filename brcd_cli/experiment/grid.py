"""The comparison grid: methods x bit lengths x seeds, one teacher per bit length, resumable cell by cell.

Layout of the output folder:

    teachers/<bits>/          a teacher per bit length (trained here unless given)
    teachers/<bits>.json      its test scores (and the floors'); teachers/<bits>.npz its test-query and database codes
    floors/<method>/<bits>/   closed-form teachers (LSH, ITQ) on the teacher's backbone: the floor a learned one must clear
    cells/<method>/<bits>/seed<s>/   the student, its run record, cell.json (scores) and codes.npz
    feature-cache/            frozen-feature caches, one per backbone and pool of views: shared by the teachers
                              of every bit length and every student cell
    results.csv, results.md, *.png   written by report.py from the finished cells

A cell is finished when its cell.json exists; a rerun skips it, continues an
interrupted student with --resume semantics, or only evaluates a student that
finished training. The data split is the teacher's (its seed), for every
student seed: the teacher's held-out queries stay held out, validation
queries drive early stopping, and test queries are only ever scored.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..atomic import atomic_write_json
from ..data import ImageSource, make_split
from ..errors import BrcdError
from ..evaluation.protocol import default_top_k, encode_with, retrieval_scores
from ..losses.registry import ablations, method_names, variants
from ..models import HashModel, load_model
from ..models.checkpoint import CONFIG
from ..options import VALID_BITS
from ..training import DistillOptions, TeacherOptions, distill, train_teacher
from ..training.common import read_run_record, recorded_seed
from ..training.loop import RESUME_FILE
from .cells import CELL_FILE, CODES_FILE, STATE_FILE, load_codes, save_codes
from .report import write_report


def parse_methods(spec: str) -> list[str]:
    """'all', 'baselines', 'ablations', or a comma list of variant names (all from the method registry)."""
    table = variants()
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":
            names += list(table)
        elif part == "ablations":
            names += ["brcd", *ablations()]
        elif part == "baselines":
            names += method_names()
        elif part in table:
            names.append(part)
        else:
            raise BrcdError(f"unknown method {part!r}; choose from all, baselines, ablations, {', '.join(table)}")
    if not names:
        raise BrcdError("--methods is empty")
    return list(dict.fromkeys(names))


def parse_bits(spec: str) -> list[int]:
    try:
        bits = [int(b) for b in spec.split(",") if b.strip()]
    except ValueError:
        raise BrcdError(f"--bits must be a comma list of code lengths, got {spec!r}") from None
    bad = [b for b in bits if b not in VALID_BITS]
    if not bits or bad:
        raise BrcdError(f"--bits must be a comma list of {', '.join(map(str, VALID_BITS))}, got {spec!r}")
    return list(dict.fromkeys(bits))


@dataclass
class ExperimentOptions:
    """The grid and the budgets of its cells. ``student`` is the template every cell's DistillOptions starts from."""

    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    seeds: int = 3
    methods: list[str] = field(default_factory=lambda: list(variants()))
    teacher: Optional[Path] = None  # a teacher folder (one bit length) or a folder of <bits>/ teachers; None: train them
    teacher_options: TeacherOptions = field(default_factory=TeacherOptions)
    student: DistillOptions = field(default_factory=DistillOptions)
    floors: list[str] = field(default_factory=lambda: ["lsh", "itq"])  # closed-form teachers scored beside each teacher
    command: str = ""  # recorded in the report

    def validate(self) -> None:
        if self.seeds < 1:
            raise BrcdError(f"--seeds must be >= 1, got {self.seeds}")
        for name in self.methods:
            if name not in variants():
                raise BrcdError(f"unknown method {name!r}")
        for name in self.floors:
            if name not in ("lsh", "itq"):
                raise BrcdError(f"unknown floor {name!r}; choose lsh, itq or none")


def find_teachers(spec: Path, bits: list[int]) -> dict[int, Path]:
    """A teacher per bit length from --teacher: one teacher folder (one bit length), or a folder holding <bits>/ teachers."""
    spec = Path(spec)
    if not spec.is_dir():
        raise BrcdError(f"--teacher {spec} is not a folder")
    if (spec / CONFIG).is_file():
        model, _ = load_model(spec)
        if bits != [model.config.bits]:
            raise BrcdError(f"{spec} is one {model.config.bits}-bit teacher; for --bits {','.join(map(str, bits))} "
                            f"give a folder with one teacher per bit length ({spec}/16, {spec}/32, ...) or omit --teacher")
        return {model.config.bits: spec}
    found: dict[int, Path] = {}
    missing = []
    for b in bits:
        candidates = [spec / name for name in (str(b), f"{b}b", f"bits{b}", f"{b}bits")]
        hit = next((c for c in candidates if (c / CONFIG).is_file()), None)
        if hit is None:
            missing.append(b)
        else:
            found[b] = hit
    if missing:
        raise BrcdError(f"no teacher for {', '.join(map(str, missing))} bits in {spec} (expected {spec}/<bits>/config.json)")
    return found


def _teacher_seed(teacher_dir: Path) -> int:
    seed = recorded_seed(teacher_dir)
    return 0 if seed is None else seed


def _score(codes_q: dict[str, np.ndarray], codes_db: dict[str, np.ndarray], q_labels: np.ndarray, db_labels: np.ndarray,
           pairs: dict[str, tuple[str, str]], top_k: Optional[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, (qm, dm) in pairs.items():
        for metric, value in retrieval_scores(codes_q[qm], codes_db[dm], q_labels, db_labels, top_k).items():
            out[f"{metric}_{name}"] = value
    return out


class Experiment:
    """Runs (or continues) the grid in ``out``; :meth:`run` returns the finished cell records."""

    def __init__(self, source: ImageSource, out: Path, options: ExperimentOptions, log: Callable[[str], None] = print) -> None:
        options.validate()
        if not source.labelled:
            raise BrcdError(f"{source.name} has no labels, so the comparison cannot be scored")
        self.source, self.out, self.options, self.log = source, Path(out), options, log
        self.top_k = default_top_k(source)

    def teacher_dirs(self) -> dict[int, Path]:
        if self.options.teacher is not None:
            return find_teachers(self.options.teacher, self.options.bits)
        dirs = {}
        for b in self.options.bits:
            d = self.out / "teachers" / str(b)
            record = read_run_record(d)
            if record is None or record.get("state") != "done":
                self.log(f"teacher for {b} bits: training {self.options.teacher_options.arch or 'the default backbone'} into {d}")
                opts = replace(self.options.teacher_options, bits=b, cache_dir=self.out / "feature-cache")
                train_teacher(self.source, d, opts, resume=(d / RESUME_FILE).is_file(), force=True, log=self.log)
            dirs[b] = d
        return dirs

    def run(self) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        state_path = self.out / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {"seconds": 0.0, "sessions": 0}
        try:
            teachers = self.teacher_dirs()
            per_bits = {}
            for b in self.options.bits:
                split_seed = _teacher_seed(teachers[b])
                split = make_split(self.source, seed=split_seed, n_queries=self.options.student.n_queries,
                                   n_train=self.options.student.n_train)
                per_bits[b] = (split_seed, split, self._teacher_eval(b, teachers[b], split))
            cells = []
            # seed-major order: an interrupted grid already covers every bit length and method with fewer seeds
            for seed in range(self.options.seeds):
                for b in self.options.bits:
                    split_seed, split, teacher_eval = per_bits[b]
                    for name in self.options.methods:
                        cells.append(self._cell(name, b, seed, teachers[b], split_seed, split, teacher_eval))
        finally:
            state["seconds"] = float(state["seconds"]) + time.monotonic() - started
            state["sessions"] = int(state["sessions"]) + 1
            state["command"] = self.options.command or state.get("command", "")
            atomic_write_json(state_path, state)
        return cells

    def _teacher_eval(self, bits: int, teacher_dir: Path, split) -> dict[str, Any]:
        path = self.out / "teachers" / f"{bits}.json"
        codes_path = self.out / "teachers" / f"{bits}.npz"
        teacher, fp = load_model(teacher_dir)
        if path.is_file() and codes_path.is_file():
            done = json.loads(path.read_text())
            if done.get("fingerprint") == fp and all(f"map_{f}" in done for f in self.options.floors):
                return done
        path.parent.mkdir(parents=True, exist_ok=True)
        models = {"teacher": teacher, **self._floors(bits, teacher_dir, teacher)}
        q = encode_with(models, self.source, split.test_queries)
        db = encode_with(models, self.source, split.database)
        ql, dl = self.source.labels[split.test_queries], self.source.labels[split.database]
        scores = _score(q, db, ql, dl, {name: (name, name) for name in models}, self.top_k)
        save_codes(codes_path, query=q["teacher"], database=db["teacher"], query_labels=ql, database_labels=dl)
        record = {"bits": bits, "teacher": str(teacher_dir), "fingerprint": fp, **scores,
                  "queries": len(split.test_queries), "database": len(split.database)}
        atomic_write_json(path, record)
        self.log(f"teacher {bits} bits: test mAP {scores['map_teacher']:.4f}")
        return record

    def _floors(self, bits: int, teacher_dir: Path, teacher: HashModel) -> dict[str, HashModel]:
        """LSH / ITQ on the teacher's own backbone and split: the same frozen features, no training loop."""
        floors = {}
        for name in self.options.floors:
            d = self.out / "floors" / name / str(bits)
            done = read_run_record(d)
            if done is None or done.get("state") != "done":
                opts = replace(self.options.teacher_options, arch=teacher.config.arch, bits=bits, image_size=teacher.config.image_size,
                               method=name, head="linear", seed=_teacher_seed(teacher_dir), cache_dir=self.out / "feature-cache")
                train_teacher(self.source, d, opts, force=True, log=self._quiet)
            floors[name] = load_model(d)[0]
        return floors

    def _cell(self, name: str, bits: int, seed: int, teacher_dir: Path, split_seed: int, split, teacher_eval: dict) -> dict[str, Any]:
        cell_dir = self.out / "cells" / name / str(bits) / f"seed{seed}"
        done_path = cell_dir / CELL_FILE
        if done_path.is_file():
            self.log(f"[{name} {bits}b seed {seed}] finished earlier, skipped")
            return json.loads(done_path.read_text())
        options = replace(self.options.student, seed=seed, split_seed=split_seed,
                          cache_dir=self.out / "feature-cache", fit=replace(self.options.student.fit, seed=seed),
                          **variants()[name])
        record = read_run_record(cell_dir)
        t0 = time.monotonic()
        if record is None or record.get("state") != "done" or not (cell_dir / CONFIG).is_file():
            resume = (cell_dir / RESUME_FILE).is_file()
            self.log(f"[{name} {bits}b seed {seed}] {'continuing' if resume else 'training'} in {cell_dir}")
            distill(self.source, teacher_dir, cell_dir, options, resume=resume, force=not resume, log=self._quiet)
            record = read_run_record(cell_dir)
        student, _ = load_model(cell_dir)
        q = encode_with({"student": student}, self.source, split.test_queries)
        db = encode_with({"student": student}, self.source, split.database)
        tc = load_codes(self.out / "teachers" / f"{bits}.npz")
        q["teacher"], db["teacher"] = tc["query"], tc["database"]
        ql, dl = self.source.labels[split.test_queries], self.source.labels[split.database]
        scores = _score(q, db, ql, dl, {"ashp": ("student", "teacher"), "sshp": ("student", "student")}, self.top_k)
        save_codes(cell_dir / CODES_FILE, query=q["student"], database=db["student"])
        fit_result = record.get("result", {})
        clusters = json.loads((cell_dir / "clusters.json").read_text()) if (cell_dir / "clusters.json").is_file() else {}
        cell = {
            "method": name, "bits": bits, "seed": seed, **scores, "map_teacher": teacher_eval["map_teacher"],
            "epochs": fit_result.get("epochs"), "best_epoch": fit_result.get("best_epoch"),
            "val_map": fit_result.get("best_score"), "train_seconds": fit_result.get("seconds"),
            "cell_seconds": time.monotonic() - t0, "clusters": clusters.get("k"),
            "feature_cache": record.get("feature_cache") is not None,
        }
        atomic_write_json(done_path, cell)
        self.log(f"[{name} {bits}b seed {seed}] ASHP {scores['map_ashp']:.4f}  SSHP {scores['map_sshp']:.4f}  "
                 f"({fit_result.get('epochs')} epochs, {cell['cell_seconds']:.0f}s)")
        return cell

    def _quiet(self, message: str) -> None:
        """Per-epoch lines of 100+ students drown the grid's progress; keep the notes that matter."""
        if message.startswith(("note:", "feature cache: built", "k-means")):
            self.log(f"    {message}")


def run_experiment(source: ImageSource, out: Path, options: ExperimentOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run or continue the grid, then write results.csv, results.md and the plots; returns the summary."""
    cells = Experiment(source, out, options, log=log).run()
    return write_report(Path(out), cells, log=log)
