"""distill: train a small student in the teacher's code space with BRCD.

Before training, the training images are encoded by the teacher (test-time
transform) and clustered; the clusters and bit masks are saved beside the
student (clusters.safetensors, clusters.json, clusters.png). ``method="none"``
trains the same student alone with CIBHash, the floor BRCD is measured
against; it gets a code space of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

from ..data import Augmenter, ImageSource, make_split, preload
from ..encoding import codes_of_images
from ..errors import BrcdError
from ..kernels import pack_codes
from ..losses import BRCDLoss, CIBHashLoss
from ..models import HashModel, code_space_of, load_model, save_model
from ..models.checkpoint import atomic_write_json
from .clustering import MASK_RULES, ClusterResult, bit_consistency, bit_masks, cluster_codes
from .common import Validator, build_model, check_resume, default_top_k, prepare_out_dir, read_run_record, write_run_record
from .loop import FitOptions, fit
from .teacher import TrainedModel

METHODS = ("brcd", "none")


@dataclass
class DistillOptions:
    """Defaults follow the reference student (EfficientNet-B0, MLP head, alpha 0.8, margin 0.5)."""

    arch: str = "efficientnet_b0"
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
    weight: float = 1.0  # weight of the BRCD term
    tau: float = 0.3
    beta: float = 0.001
    augment: Optional[str] = None  # None: the teacher's recipe
    seed: int = 0
    n_train: int = 5000
    n_queries: Optional[int] = None
    fit: FitOptions = field(default_factory=lambda: FitOptions(epochs=400, batch_size=64, lr=1e-3))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise BrcdError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.mask_rule not in MASK_RULES:
            raise BrcdError(f"mask rule must be one of {', '.join(MASK_RULES)}, got {self.mask_rule!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise BrcdError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.margin <= 1.0:
            raise BrcdError(f"margin must be in [0, 1], got {self.margin}")
        if self.clusters is not None and self.clusters < 1:
            raise BrcdError(f"clusters must be a positive number or auto, got {self.clusters}")


def save_clusters(out_dir: Path, result: ClusterResult, consistency: np.ndarray, masks: np.ndarray, train_ids: list[str], options: DistillOptions) -> None:
    """Clusters and masks beside the student: tensors in safetensors, the choice and curve in JSON, the curve as PNG."""
    save_file(
        {
            "centres": result.centres.astype(np.float32),
            "consistency": consistency.astype(np.float32),
            "masks": masks.astype(np.uint8),
            "labels": result.labels.astype(np.int64),
        },
        str(out_dir / "clusters.safetensors"),
    )
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
    fig.savefig(path)
    plt.close(fig)


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
    options.validate()
    out_dir = Path(out_dir)
    teacher, teacher_fp = load_model(teacher_dir)
    teacher.requires_grad_(False).eval()
    prepare_out_dir(out_dir, force=force, resume=resume)
    if resume:
        check_resume(read_run_record(out_dir), "student", options)
    torch.manual_seed(options.seed)
    size = options.image_size or teacher.config.image_size
    augment = options.augment or teacher.config.augment
    bits = teacher.config.bits
    split = make_split(source, seed=options.seed, n_queries=options.n_queries, n_train=options.n_train)
    images = preload(source, split.train, size)
    distilling = options.method == "brcd"
    model = build_model(
        options.arch, bits, size, options.pretrained, options.freeze_backbone, log,
        role="student", head=options.head, hidden=options.hidden, augment=augment,
        method="brcd" if distilling else "cibhash",
        code_space=code_space_of(teacher.config, teacher_fp) if distilling else "",
    )
    log(f"student {options.arch}, {bits} bits, {size}px, method {options.method}; {len(split.train)} training images")

    clusters = centres = masks = None
    teacher_codes = codes_of_images(teacher, images).numpy() if distilling else None
    if distilling and (options.false_negatives or options.false_positives or options.bit_mask):
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

    cib = CIBHashLoss(tau=options.tau, beta=options.beta)
    brcd = BRCDLoss(tau=options.tau, alpha=options.alpha, false_negatives=options.false_negatives,
                    false_positives=options.false_positives, bit_mask=options.bit_mask)
    teacher_size = teacher.config.image_size

    def teacher_codes_of(views: torch.Tensor) -> torch.Tensor:
        if views.shape[-1] != teacher_size:
            views = F.interpolate(views, size=(teacher_size, teacher_size), mode="bilinear", align_corners=False, antialias=True)
        return teacher.codes(views)

    def step(idx: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        logits = model(torch.cat([v1, v2]))
        loss, s1, _ = cib(*logits.chunk(2))
        if distilling:
            t1, t2 = teacher_codes_of(torch.cat([v1, v2])).chunk(2)
            loss = loss + options.weight * brcd(
                s1, t1, t2,
                clusters=clusters[idx] if clusters is not None else None,
                centres=centres, masks=masks,
            )
        return loss

    validator = None
    if source.labelled:
        db_codes = pack_codes(teacher_codes) if teacher_codes is not None else None
        validator = Validator(source, split, images, default_top_k(source), db_codes=db_codes)
        log(f"validation: {'ASHP (student queries, teacher database)' if distilling else 'SSHP'} mAP on {len(split.val_queries)} validation queries")
    write_run_record(out_dir, {"kind": "student", "data": source.name, "teacher": str(teacher_dir), "options": options, "state": "training"})
    result_fit = fit(model, step, images, Augmenter(augment), options.fit, out_dir, validator, resume=resume, log=log)
    fingerprint = save_model(model, out_dir)
    write_run_record(out_dir, {
        "kind": "student", "data": source.name, "teacher": str(teacher_dir), "teacher_fingerprint": teacher_fp,
        "options": options, "state": "done", "fingerprint": fingerprint, "result": result_fit.to_dict(),
    })
    log(f"student saved to {out_dir} (best val mAP {result_fit.best_score:.4f} at epoch {result_fit.best_epoch}, {result_fit.stopped})")
    return TrainedModel(model, fingerprint, result_fit, out_dir)
