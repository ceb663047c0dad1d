"""distill: train a small student in the teacher's code space, with BRCD or a KD baseline.

Before training, the training images are encoded by the teacher (test-time
transform); for methods that need clusters (BRCD) they are also clustered,
and the clusters and bit masks are saved beside the student
(clusters.safetensors, clusters.json, clusters.png). Every method trains the
student's own CIBHash loss plus its distillation term against the frozen
teacher; the methods, their published weights and the tensors they need come
from the method registry (brcd_cli/losses/registry.py; ``brcd distill --help``
lists them), ``none`` being the student trained alone, the floor every
method is measured against.

Methods that keep the teacher's code space record it, are validated in ASHP
(student queries against teacher codes) and can search teacher-encoded
databases; the others get a code space of their own. With a frozen student
backbone the frozen forwards are precomputed once into feature caches
(feature_cache.py): the teacher backbone's (the teacher's own training cache
when the views match) and the student backbone's, on the same views; only
the heads run per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.numpy import save as safetensors_bytes

from ..data import Augmenter, ImageSource, make_split, preload
from ..encoding import codes_of_images
from ..atomic import atomic_write, atomic_write_bytes, atomic_write_json
from ..errors import BrcdError, OptionError
from ..evaluation.protocol import default_top_k
from ..kernels import pack_codes
from ..losses import CIBHashLoss
from ..losses.registry import DistillBatch, Method, MethodContext, get_method
from ..models import HashModel, code_space_of, load_model, save_model, sign_codes
from ..options import MASK_RULES, at_least, check_model_options, one_of, positive, within
from .clustering import ClusterResult, bit_consistency, bit_masks, cluster_codes
from .common import Validator, build_model, check_resume, check_out_dir, read_run_record, recorded_seed, resolve_arch, write_run_record
from .feature_cache import CachedValidator, FeatureCache, ViewSet, build_or_open, cache_root, split_head, teacher_outputs
from .loop import FitOptions, fit
from .teacher import TrainedModel, uses_cache

PAPER_STUDENT = "efficientnet_b0"

# A term's trainable part (FitNet's regressor) is attached to the student while it trains so that the
# loop's optimizer sees it; removed before saving.
TRAINABLE = "distill_trainable"


@dataclass
class DistillOptions:
    """Defaults follow the reference student (EfficientNet-B0, MLP head, alpha 0.8, margin 0.5)."""

    arch: Optional[str] = None  # None: the paper's EfficientNet-B0 when its weights are here, else the smallest offline backbone
    image_size: Optional[int] = None  # None: the teacher's
    pretrained: str = "auto"
    freeze_backbone: Optional[bool] = None
    head: str = "mlp"
    hidden: int = 1000
    method: str = "brcd"
    alpha: float = 0.8
    margin: float = 0.5
    mask_rule: str = "consistent"
    clusters: Optional[int] = None  # None: chosen automatically (silhouette)
    max_clusters: int = 20
    false_negatives: bool = True
    false_positives: bool = True
    bit_mask: bool = True
    weight: Optional[float] = None  # weight of the distillation term; None: the method's published weight
    kd_temperature: float = 4.0
    tau: float = 0.3
    beta: float = 0.001
    augment: Optional[str] = None  # None: the teacher's recipe
    seed: int = 0
    split_seed: Optional[int] = None  # None: the teacher's seed (its held-out queries stay held out), else seed
    feature_cache: Optional[bool] = None  # None: on exactly when the student backbone is frozen
    cache_views: int = 8
    cache_dir: Optional[Path] = None  # None: $BRCD_CACHE_DIR, else TEACHER/feature-cache (shared by its students)
    n_train: int = 5000
    n_queries: Optional[int] = None
    fit: FitOptions = field(default_factory=lambda: FitOptions(epochs=400, batch_size=64, lr=1e-3))

    def __post_init__(self) -> None:
        get_method(self.method)
        check_model_options(None, self.image_size, self.head, self.hidden, self.augment)  # bits are the teacher's
        one_of("mask_rule", self.mask_rule, MASK_RULES)
        within("alpha", self.alpha, 0.0, 1.0)
        within("margin", self.margin, 0.0, 1.0)
        at_least("clusters", self.clusters, 1, optional=True)
        at_least("max_clusters", self.max_clusters, 2)
        at_least("weight", self.weight, 0, optional=True)
        positive("kd_temperature", self.kd_temperature)
        positive("tau", self.tau)
        at_least("beta", self.beta, 0)
        if self.cache_views < 2:
            raise OptionError("cache_views", f"must be at least 2 (BRCD needs two views of each image), got {self.cache_views}")

    @property
    def distill_method(self) -> Method:
        return get_method(self.method)

    @property
    def distill_weight(self) -> float:
        return self.distill_method.weight if self.weight is None else self.weight


def save_clusters(out_dir: Path, result: ClusterResult, consistency: np.ndarray, masks: np.ndarray, train_ids: list[str], options: DistillOptions) -> None:
    """Clusters and masks beside the student: tensors in safetensors, the choice and curve in JSON, the curve as PNG."""
    atomic_write_bytes(out_dir / "clusters.safetensors", safetensors_bytes({
        "centres": result.centres.astype(np.float32),
        "consistency": consistency.astype(np.float32),
        "masks": masks.astype(np.uint8),
        "labels": result.labels.astype(np.int64),
    }))
    atomic_write_json(out_dir / "clusters.json", {
        "k": result.k,
        "choice": result.method,
        "rule": "k with the highest silhouette score over the curve" if result.method == "silhouette" else "given",
        "curve": result.curve,
        "margin": options.margin,
        "mask_rule": options.mask_rule,
        "bits_kept_per_cluster": masks.sum(axis=1).astype(int).tolist(),
        "cluster_sizes": np.bincount(result.labels, minlength=result.k).astype(int).tolist(),
        "train_ids": train_ids,
    })
    if result.curve:
        plot_cluster_curve(result, out_dir / "clusters.png")


def plot_cluster_curve(result: ClusterResult, path: Path) -> None:
    """Elbow (inertia) and silhouette against k, with the chosen k marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [row["k"] for row in result.curve]
    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax1.plot(ks, [row["inertia"] for row in result.curve], "o-", color="tab:blue")
    ax1.set_xlabel("clusters k")
    ax1.set_ylabel("inertia (elbow)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ks, [row["silhouette"] for row in result.curve], "s-", color="tab:orange")
    ax2.set_ylabel("silhouette", color="tab:orange")
    ax1.axvline(result.k, color="gray", linestyle="--")
    ax1.set_title(f"k-means on teacher codes: chosen k = {result.k}")
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


class Objective:
    """The student's CIBHash loss plus the chosen method's distillation term, on a batch of two views.

    Inputs are rows of both views stacked ([view 1; view 2], 2B rows): the
    student's logits, the input of its hash layer (when the method needs it),
    the teacher's logits and hash-layer inputs. The term comes from the method
    registry (:mod:`brcd_cli.losses.registry`). The same object serves training
    from images and training from the feature cache, so both optimise the same thing.
    """

    def __init__(self, options: DistillOptions, student_dim: int = 0, teacher_dim: int = 0,
                 clusters: Optional[torch.Tensor] = None, centres: Optional[torch.Tensor] = None,
                 masks: Optional[torch.Tensor] = None) -> None:
        self.method, self.weight = options.distill_method, options.distill_weight
        self.cib = CIBHashLoss(tau=options.tau, beta=options.beta)
        self.term = self.method.build(MethodContext(options, student_dim, teacher_dim, clusters, centres, masks))

    @property
    def needs_hidden(self) -> bool:
        return "hidden" in self.method.needs

    @property
    def trainable(self) -> Optional[torch.nn.Module]:
        """Parameters the term trains with the student, if any."""
        return self.term.trainable if self.term is not None else None

    def __call__(self, idx: torch.Tensor, s_logits: torch.Tensor, s_hidden: Optional[torch.Tensor],
                 t_logits: Optional[torch.Tensor], t_hidden: Optional[torch.Tensor]) -> torch.Tensor:
        loss, s1, s2 = self.cib(*s_logits.chunk(2))
        if self.term is None:
            return loss
        t1, t2 = sign_codes(t_logits).chunk(2)
        batch = DistillBatch(idx, s_logits, (s1, s2), t_logits, (t1, t2), s_hidden, t_hidden)
        return loss + self.weight * self.term(batch)


def teacher_split_seed(teacher_dir: Path, options: DistillOptions) -> int:
    """The split a student trains on: the given one, else the teacher's (so its held-out queries stay held out)."""
    if options.split_seed is not None:
        return options.split_seed
    seed = recorded_seed(teacher_dir)
    return options.seed if seed is None else seed


@dataclass
class CachedViews:
    """The teacher's and the student's backbone features of the same pool of views."""

    teacher: FeatureCache
    student: FeatureCache


def distill(
    source: ImageSource,
    teacher_dir: Path,
    out_dir: Path,
    options: DistillOptions,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> TrainedModel:
    """Train a student against a saved teacher (or alone with method='none') and save it in ``out_dir``."""
    out_dir = Path(out_dir)
    teacher, teacher_fp = load_model(teacher_dir)
    teacher.requires_grad_(False).eval()
    check_out_dir(out_dir, force=force, resume=resume)
    if resume:
        check_resume(read_run_record(out_dir), "student", options)
    torch.manual_seed(options.seed)
    size = options.image_size or teacher.config.image_size
    augment = options.augment or teacher.config.augment
    bits = teacher.config.bits
    split_seed = teacher_split_seed(teacher_dir, options)
    split = make_split(source, seed=split_seed, n_queries=options.n_queries, n_train=options.n_train)
    method = options.distill_method
    distilling = method.distills
    arch = resolve_arch(options.arch, PAPER_STUDENT, options.pretrained, "student", log)
    model = build_model(
        arch, bits, size, options.pretrained, options.freeze_backbone, log,
        role="student", head=options.head, hidden=options.hidden, augment=augment,
        method="cibhash" if not distilling else options.method,
        code_space=code_space_of(teacher.config, teacher_fp) if method.keeps_code_space else "",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    images = preload(source, split.train, size)  # after the model: a refused backbone costs no decoding
    cached: Optional[CachedViews] = None
    if uses_cache(options.feature_cache, model, "student"):
        root = cache_root(options.cache_dir, teacher_dir)
        view_images = images if teacher.config.image_size == size else preload(source, split.train, teacher.config.image_size)
        view_set = ViewSet.of(view_images, split.train, augment, options.cache_views, split_seed)
        cached = CachedViews(teacher=build_or_open(root, teacher, view_set, view_images, log=log),
                             student=build_or_open(root, model, view_set, images, log=log))
    log(f"student {arch}, {bits} bits, {size}px, method {options.method}; {len(split.train)} training images"
        f"{'; frozen backbone, training the heads from a feature cache' if cached else ''}")

    clusters = centres = masks = None
    teacher_codes = None
    if distilling:
        if cached is not None:  # the teacher's head on its cached test-time features: its codes of these images
            with torch.no_grad():
                teacher_codes = sign_codes(teacher.head(cached.teacher.clean_features())).numpy()
        else:
            teacher_codes = codes_of_images(teacher, images).numpy()
    if "clusters" in method.needs and (options.false_negatives or options.false_positives or options.bit_mask):
        result = cluster_codes(teacher_codes, k=options.clusters, seed=options.seed, k_range=(2, options.max_clusters))
        consistency = bit_consistency(teacher_codes, result.labels, result.k)
        mask_matrix = bit_masks(consistency, options.margin, options.mask_rule)
        save_clusters(out_dir, result, consistency, mask_matrix, [source.ids[i] for i in split.train], options)
        kept = mask_matrix.sum(axis=1)
        log(f"k-means on teacher codes: k = {result.k} ({result.method}); bits kept per cluster by the mask: "
            f"min {kept.min()}, mean {kept.mean():.1f}, max {kept.max()} of {bits}")
        clusters = torch.from_numpy(result.labels)
        centres = torch.from_numpy(result.centres)
        masks = torch.from_numpy(mask_matrix.astype(np.float32))

    probe = images[:1].float().div(255.0)
    model.eval()  # a one-image probe of the widths; the loop puts the model back in training mode
    with torch.no_grad():
        student_dim = split_head(model.head, model.features(probe))[0].shape[1]
        teacher_dim = teacher_outputs(teacher, probe)[0].shape[1]
    objective = Objective(options, student_dim, teacher_dim, clusters, centres, masks)
    if objective.trainable is not None:
        model.add_module(TRAINABLE, objective.trainable)

    db_codes = pack_codes(teacher_codes) if method.keeps_code_space else None
    top_k = default_top_k(source)
    if cached is not None:
        step = _cached_step(model, teacher, cached, objective, options.seed)
        train_images, augmenter = torch.zeros((images.shape[0], 1, 1, 1), dtype=torch.uint8), Augmenter("none")
    else:
        step = _image_step(model, teacher, objective, distilling)
        train_images, augmenter = images, Augmenter(augment)

    validator = None
    if source.labelled:
        if cached is not None:
            query_images = preload(source, split.val_queries, size)
            validator = CachedValidator(model, query_images, source.labels[split.val_queries], cached.student.clean_features(),
                                        source.labels[split.train], top_k, db_codes=db_codes)
        else:
            validator = Validator(source, split, images, top_k, db_codes=db_codes)
        log(f"validation: {'ASHP (student queries, teacher database)' if method.keeps_code_space else 'SSHP'} mAP on {len(split.val_queries)} validation queries")
    write_run_record(out_dir, {"kind": "student", "data": source.name, "teacher": str(teacher_dir), "options": options, "state": "training"})
    try:
        result_fit = fit(model, step, train_images, augmenter, options.fit, out_dir, validator, resume=resume, log=log)
    finally:
        if TRAINABLE in model._modules:
            del model._modules[TRAINABLE]
    fingerprint = save_model(model, out_dir)
    write_run_record(out_dir, {
        "kind": "student", "data": source.name, "teacher": str(teacher_dir), "teacher_fingerprint": teacher_fp,
        "options": options, "state": "done", "fingerprint": fingerprint, "result": result_fit.to_dict(),
        "split_seed": split_seed, "arch": arch,
        "feature_cache": str(cached.student.path) if cached is not None else None,
        "teacher_feature_cache": str(cached.teacher.path) if cached is not None else None,
    })
    log(f"student saved to {out_dir} (best val mAP {result_fit.best_score:.4f} at epoch {result_fit.best_epoch}, {result_fit.stopped})")
    return TrainedModel(model, fingerprint, result_fit, out_dir)


def _image_step(model: HashModel, teacher: HashModel, objective: Objective, distilling: bool):
    """A training step on two augmented views: the student's forward, and the teacher's when distilling."""

    def step(idx: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        views = torch.cat([v1, v2])
        if objective.needs_hidden:
            if model.config.freeze_backbone:
                with torch.no_grad():
                    feats = model.features(views)
            else:
                feats = model.features(views)
            s_hidden, s_logits = split_head(model.head, feats)
        else:
            s_hidden, s_logits = None, model(views)
        t_hidden = t_logits = None
        if distilling:
            t_hidden, t_logits = teacher_outputs(teacher, views)
        return objective(idx, s_logits, s_hidden, t_logits, t_hidden)

    return step


def _cached_step(model: HashModel, teacher: HashModel, cached: CachedViews, objective: Objective, seed: int):
    """A training step from the caches: two different pool views per image, heads only.

    The view draws follow their own seeded generator (the loop's generator
    shapes only the batch order); a resumed run restarts it, so it draws
    other, equally valid, views than an uninterrupted run would have.
    """
    generator = torch.Generator().manual_seed(seed)

    def step(idx: torch.Tensor, _v1: torch.Tensor, _v2: torch.Tensor) -> torch.Tensor:
        positions = idx.numpy()
        first, second = cached.student.draw_views(len(positions), generator)
        both = (np.concatenate([positions, positions]), np.concatenate([first, second]))
        s_hidden, s_logits = split_head(model.head, cached.student.rows(*both))
        with torch.no_grad():
            t_hidden, t_logits = split_head(teacher.head, cached.teacher.rows(*both))
        return objective(idx, s_logits, s_hidden, t_logits, t_hidden)

    return step
