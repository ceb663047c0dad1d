"""train-teacher: CIBHash on a timm backbone, or a classic closed-form baseline (LSH, ITQ).

With a frozen backbone (the paper's setting: pretrained, only the hash head
learns) the backbone's features of V augmented views of every training image
are computed once into a feature cache (feature_cache.py) and each epoch is a
pass of the head over cached features. That cache is also the teacher side of
every student distilled from this teacher with the same views.

``--method lsh|itq`` fits the linear head in closed form on the frozen
features of the training images (random hyperplanes; PCA plus the ITQ
rotation): no training loop, the same checkpoint and codes format, the floor
a learned teacher must clear.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import distributed
from ..data import Augmenter, ImageSource, Split, make_split, preload
from ..errors import BrcdError
from ..evaluation.protocol import default_top_k
from ..losses import CIBHashLoss
from ..models import HashModel, save_model
from ..options import TEACHER_METHODS, at_least, check_model_options, one_of, positive
from .common import Validator, build_model, check_resume, check_out_dir, read_run_record, resolve_arch, write_run_record
from .feature_cache import (CachedValidator, FeatureCache, ViewSet, build_or_open, cache_root, clean_features_of,
                            find_clean_features)
from .loop import FitOptions, FitResult, fit

PAPER_TEACHER = "vit_base_patch16_224"


@dataclass
class TeacherOptions:
    """Defaults follow the reference setup (ViT-B/16, frozen when pretrained, Linear head).

    ``arch=None`` means the paper's ViT-B/16 when its weights are here, else the
    best pretrained backbone available offline (said in one line).
    """

    arch: Optional[str] = None
    bits: int = 64
    image_size: int = 224
    pretrained: str = "auto"
    freeze_backbone: Optional[bool] = None  # None: frozen exactly when pretrained weights were loaded
    head: str = "linear"
    hidden: int = 1000
    method: str = "cibhash"
    tau: float = 0.3
    beta: float = 0.001
    stochastic: bool = False
    augment: Optional[str] = None  # None: the data set's own recipe
    seed: int = 0
    feature_cache: Optional[bool] = None  # None: on exactly when the backbone is frozen
    cache_views: int = 8
    cache_dir: Optional[Path] = None  # None: $BRCD_CACHE_DIR, else OUT/feature-cache
    n_train: int = 5000
    n_queries: Optional[int] = None
    fit: FitOptions = field(default_factory=lambda: FitOptions(epochs=200, batch_size=64, lr=5e-4))

    def __post_init__(self) -> None:
        check_model_options(self.bits, self.image_size, self.head, self.hidden, self.augment)
        one_of("method", self.method, TEACHER_METHODS)
        positive("tau", self.tau)
        at_least("beta", self.beta, 0)
        at_least("cache_views", self.cache_views, 2)


@dataclass
class TrainedModel:
    model: HashModel
    fingerprint: str
    result: FitResult
    out_dir: Path


def uses_cache(setting: Optional[bool], model: HashModel, role: str) -> bool:
    """The feature cache is on by default exactly when the backbone is frozen; a single-process feature."""
    frozen = model.config.freeze_backbone
    if setting is None:
        return frozen and not distributed.current().distributed
    if setting and not frozen:
        raise BrcdError(f"the feature cache needs a frozen {role} backbone: pass --freeze-backbone or --no-feature-cache")
    if setting and distributed.current().distributed:
        raise BrcdError("the feature cache runs in one process; pass --no-feature-cache under torchrun")
    return bool(setting)


def train_teacher(
    source: ImageSource,
    out_dir: Path,
    options: TeacherOptions,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> TrainedModel:
    """Train a teacher (CIBHash, or a closed-form LSH/ITQ head) and save it (weights, config, run record) in ``out_dir``."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force=force, resume=resume)
    if resume:
        check_resume(read_run_record(out_dir), "teacher", options)
    torch.manual_seed(options.seed)
    augment = options.augment or source.augment
    split = make_split(source, seed=options.seed, n_queries=options.n_queries, n_train=options.n_train)
    arch = resolve_arch(options.arch, PAPER_TEACHER, options.pretrained, "teacher", log)
    closed_form = options.method != "cibhash"
    if closed_form and options.head != "linear":
        raise BrcdError(f"--method {options.method} fits a linear head; pass --head linear")
    model = build_model(
        arch, options.bits, options.image_size, options.pretrained, options.freeze_backbone, log,
        role="teacher", head=options.head, hidden=options.hidden, augment=augment, method=options.method,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"teacher {arch}, {options.bits} bits, {options.image_size}px, {options.method}, backbone "
        f"{'frozen' if model.config.freeze_backbone else 'trained'}; {len(split.train)} training images")
    images = preload(source, split.train, options.image_size)
    write_run_record(out_dir, {"kind": "teacher", "data": source.name, "options": options, "state": "training"})
    cache: Optional[FeatureCache] = None
    if closed_form:
        result = _fit_closed_form(model, source, split, images, options, out_dir, log)
    else:
        if uses_cache(options.feature_cache, model, "teacher"):
            root = cache_root(options.cache_dir, out_dir)
            view_set = ViewSet.of(images, split.train, augment, options.cache_views, options.seed)
            cache = build_or_open(root, model, view_set, images, log=log)
        result = _fit_cibhash(model, source, split, images, augment, cache, options, out_dir, resume, log)
    fingerprint = save_model(model, out_dir)
    write_run_record(out_dir, {
        "kind": "teacher", "data": source.name, "options": options, "state": "done", "arch": arch,
        "fingerprint": fingerprint, "result": result.to_dict(),
        "split": {k: len(v) for k, v in split.as_dict().items()},
        "feature_cache": str(cache.path) if cache is not None else None,
    })
    log(f"teacher saved to {out_dir} (best val mAP {result.best_score:.4f} at epoch {result.best_epoch}, {result.stopped})")
    return TrainedModel(model, fingerprint, result, out_dir)


def _fit_cibhash(model: HashModel, source: ImageSource, split: Split, images: torch.Tensor, augment: str,
                 cache: Optional[FeatureCache], options: TeacherOptions, out_dir: Path, resume: bool,
                 log: Callable[[str], None]) -> FitResult:
    """The CIBHash loop: from cached frozen features (heads only) or from images (augmented per step)."""
    criterion = CIBHashLoss(tau=options.tau, beta=options.beta, stochastic=options.stochastic)
    top_k = default_top_k(source)
    validator = None
    if cache is not None:
        generator = torch.Generator().manual_seed(options.seed)

        def step(idx: torch.Tensor, _v1: torch.Tensor, _v2: torch.Tensor) -> torch.Tensor:
            positions = idx.numpy()
            first, second = cache.draw_views(len(positions), generator)
            logits = model.head(torch.cat([cache.rows(positions, first), cache.rows(positions, second)]))
            return criterion(*logits.chunk(2))[0]

        train_images, augmenter = torch.zeros((images.shape[0], 1, 1, 1), dtype=torch.uint8), Augmenter("none")
        if source.labelled:
            validator = CachedValidator(model, preload(source, split.val_queries, options.image_size),
                                        source.labels[split.val_queries], cache.clean_features(),
                                        source.labels[split.train], top_k)
    else:
        def step(idx: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
            return criterion(*model(torch.cat([v1, v2])).chunk(2))[0]

        train_images, augmenter = images, Augmenter(augment)
        if source.labelled:
            validator = Validator(source, split, images, top_k)
    if validator is None:
        log("the data has no labels: no validation mAP, training runs for the full number of epochs")
    return fit(model, step, train_images, augmenter, options.fit, out_dir, validator, resume=resume, log=log)


def _fit_closed_form(model: HashModel, source: ImageSource, split: Split, images: torch.Tensor,
                     options: TeacherOptions, out_dir: Path, log: Callable[[str], None]) -> FitResult:
    """LSH or ITQ on the backbone's test-time features of the training images, written into the linear head."""
    from .classic import CLASSIC_METHODS

    t0 = time.monotonic()
    root = cache_root(options.cache_dir, out_dir)
    features = find_clean_features(root, model, images)
    if features is None:
        features = clean_features_of(model, images)
    else:
        log(f"{options.method}: the training images' features from the feature cache under {root}")
    weight, bias = CLASSIC_METHODS[options.method](features.numpy().astype(np.float64), options.bits, options.seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        model.head.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    model.eval()
    score = float("nan")
    if source.labelled:
        # the training images are the validation database: their features are the ones just fitted on
        score = CachedValidator(model, preload(source, split.val_queries, options.image_size), source.labels[split.val_queries],
                                features, source.labels[split.train], default_top_k(source))(model)
        log(f"{options.method}: val mAP {score:.4f}")
    seconds = time.monotonic() - t0
    return FitResult(best_score=score, best_epoch=0, epochs=0, seconds=seconds, stopped="closed-form",
                     history=[{"epoch": 0, "loss": 0.0, "score": score, "seconds": seconds}])
