"""train-teacher: CIBHash on a timm backbone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data import Augmenter, ImageSource, make_split, preload
from ..evaluation.protocol import default_top_k
from ..losses import CIBHashLoss
from ..models import HashModel, save_model
from ..options import at_least, check_model_options, positive
from .common import Validator, build_model, check_resume, prepare_out_dir, read_run_record, write_run_record
from .loop import FitOptions, FitResult, fit


@dataclass
class TeacherOptions:
    """Defaults follow the reference setup (ViT-B/16, frozen when pretrained, Linear head)."""

    arch: str = "vit_base_patch16_224"
    bits: int = 64
    image_size: int = 224
    pretrained: str = "auto"
    freeze_backbone: Optional[bool] = None  # None: frozen exactly when pretrained weights were loaded
    head: str = "linear"
    hidden: int = 1000
    tau: float = 0.3
    beta: float = 0.001
    stochastic: bool = False
    augment: Optional[str] = None  # None: the data set's own recipe
    seed: int = 0
    n_train: int = 5000
    n_queries: Optional[int] = None
    fit: FitOptions = field(default_factory=lambda: FitOptions(epochs=200, batch_size=64, lr=5e-4))

    def __post_init__(self) -> None:
        check_model_options(self.bits, self.image_size, self.head, self.hidden, self.augment)
        positive("tau", self.tau)
        at_least("beta", self.beta, 0)


@dataclass
class TrainedModel:
    model: HashModel
    fingerprint: str
    result: FitResult
    out_dir: Path


def train_teacher(
    source: ImageSource,
    out_dir: Path,
    options: TeacherOptions,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> TrainedModel:
    """Train a CIBHash teacher and save it (weights, config, run record) in ``out_dir``."""
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, force=force, resume=resume)
    if resume:
        check_resume(read_run_record(out_dir), "teacher", options)
    torch.manual_seed(options.seed)
    augment = options.augment or source.augment
    split = make_split(source, seed=options.seed, n_queries=options.n_queries, n_train=options.n_train)
    model = build_model(
        options.arch, options.bits, options.image_size, options.pretrained, options.freeze_backbone, log,
        role="teacher", head=options.head, hidden=options.hidden, augment=augment, method="cibhash",
    )
    log(f"teacher {options.arch}, {options.bits} bits, {options.image_size}px, backbone {'frozen' if model.config.freeze_backbone else 'trained'}; "
        f"{len(split.train)} training images")
    images = preload(source, split.train, options.image_size)
    validator = Validator(source, split, images, default_top_k(source)) if source.labelled else None
    if validator is None:
        log("the data has no labels: no validation mAP, training runs for the full number of epochs")
    criterion = CIBHashLoss(tau=options.tau, beta=options.beta, stochastic=options.stochastic)

    def step(idx: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        logits = model(torch.cat([v1, v2]))
        loss, _, _ = criterion(*logits.chunk(2))
        return loss

    write_run_record(out_dir, {"kind": "teacher", "data": source.name, "options": options, "state": "training"})
    result = fit(model, step, images, Augmenter(augment), options.fit, out_dir, validator, resume=resume, log=log)
    fingerprint = save_model(model, out_dir)
    write_run_record(out_dir, {
        "kind": "teacher", "data": source.name, "options": options, "state": "done",
        "fingerprint": fingerprint, "result": result.to_dict(),
        "split": {k: len(v) for k, v in split.as_dict().items()},
    })
    log(f"teacher saved to {out_dir} (best val mAP {result.best_score:.4f} at epoch {result.best_epoch}, {result.stopped})")
    return TrainedModel(model, fingerprint, result, out_dir)
