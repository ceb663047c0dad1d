"""The evaluation protocol: teacher-teacher, ASHP and SSHP on one split.

Queries are the split's test queries (never used for training choices), the
database is the split's database. Each image is decoded once and encoded by
every model under test, so evaluating a teacher and a student costs one pass
over the images.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..data import ImageSource, iter_batches, make_split
from ..encoding import features_of, packed_codes_of_images
from ..errors import BrcdError
from ..kernels import pack_codes
from ..models import HashModel, backbone_digest, sign_codes
from ..options import positive
from .metrics import mean_average_precision, precision_within_radius


def encode_with(models: dict[str, HashModel], source: ImageSource, indices: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Packed codes of the same images under several models, decoding each image once.

    Models that share a frozen backbone (a teacher and the LSH/ITQ floors on
    the same pretrained network, say) run that backbone once per batch and
    only their heads apart: the codes are the same as each model's own.
    """
    size = max(m.config.image_size for m in models.values())
    parts: dict[str, list[np.ndarray]] = {name: [] for name in models}
    groups = _shared_backbones(models)
    for _, images in iter_batches(source, indices, size, batch_size):
        for names in groups:
            first = models[names[0]]
            if len(names) == 1:
                parts[names[0]].append(packed_codes_of_images(first, images, batch_size))
                continue
            features = features_of(first, images, batch_size)
            for name in names:
                with torch.no_grad():
                    parts[name].append(pack_codes(sign_codes(models[name].head(features)).numpy()))
    return {
        name: np.concatenate(p) if p else np.zeros((0, models[name].config.bits // 8), dtype=np.uint8)
        for name, p in parts.items()
    }


def _shared_backbones(models: dict[str, HashModel]) -> list[list[str]]:
    """Model names grouped by identical backbone input and weights (same size, normalisation and digest)."""
    if len(models) < 2:  # nothing to share: skip hashing the weights
        return [[name] for name in models]
    groups: dict[tuple, list[str]] = {}
    for name, model in models.items():
        key: tuple = (name,)
        if isinstance(model, HashModel):
            key = (model.config.image_size, tuple(model.config.mean), tuple(model.config.std), backbone_digest(model))
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def retrieval_scores(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, top_k: Optional[int]) -> dict[str, float]:
    """mAP@K (ties by index), its tie-aware twin, and precision within Hamming radius 2."""
    return {
        "map": float(mean_average_precision(q, db, q_labels, db_labels, k=top_k)),
        "map_tie_aware": float(mean_average_precision(q, db, q_labels, db_labels, k=top_k, tie_aware=True)),
        "p_r2": float(precision_within_radius(q, db, q_labels, db_labels, radius=2)),
    }


def default_top_k(source: ImageSource) -> Optional[int]:
    """mAP@K of the reference protocol: 1000 for CIFAR-10, the whole ranking for small sets."""
    return 1000 if source.name == "cifar10" else None


def evaluate_models(
    source: ImageSource,
    teacher: HashModel,
    student: Optional[HashModel] = None,
    seed: int = 0,
    n_queries: Optional[int] = None,
    n_train: int = 5000,
    top_k: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Scores for teacher-teacher and, with a student, ASHP (student queries vs teacher database)
    and SSHP (student both sides); keys map_teacher, map_ashp, map_sshp and their variants."""
    positive("top_k", top_k, optional=True)
    if not source.labelled:
        raise BrcdError(f"{source.name} has no labels, so retrieval cannot be scored")
    if student is not None and student.config.bits != teacher.config.bits:
        raise BrcdError(f"teacher makes {teacher.config.bits}-bit codes, student {student.config.bits}-bit: not comparable")
    split = make_split(source, seed=seed, n_queries=n_queries, n_train=n_train)
    models = {"teacher": teacher} if student is None else {"teacher": teacher, "student": student}
    log(f"encoding {len(split.test_queries)} test queries and a database of {len(split.database)} images")
    q = encode_with(models, source, split.test_queries)
    db = encode_with(models, source, split.database)
    ql, dl = source.labels[split.test_queries], source.labels[split.database]
    pairs = {"teacher": ("teacher", "teacher")}
    if student is not None:
        pairs.update({"ashp": ("student", "teacher"), "sshp": ("student", "student")})
    out: dict[str, float] = {"top_k": top_k if top_k is not None else len(split.database), "queries": len(split.test_queries), "database": len(split.database)}
    for name, (qm, dm) in pairs.items():
        for metric, value in retrieval_scores(q[qm], db[dm], ql, dl, top_k).items():
            out[f"{metric}_{name}"] = value
    return out
