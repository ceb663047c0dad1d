"""A disk cache of frozen-network outputs, so that distillation trains only the heads.

In the paper's setting the teacher and the student's backbone are frozen:
every epoch would recompute the same expensive forwards on fresh augmented
views. Instead, once per (student backbone, teacher, data, augmentation, V,
seed), brcd draws a pool of V augmented views of every training image and
stores, as memory-mapped .npy arrays:

    student.npy         (N, V, d_s) float32  student backbone features of each view
    teacher_logits.npy  (N, V, L)   float32  teacher logits (codes = sign) of the same view
    teacher_hidden.npy  (N, V, d_t) float32  the input of the teacher's hash layer (FitNet's hint)
    clean.npy           (N, d_s)    float32  student features of the test-time image (validation database)
    meta.json                                the fingerprint inputs, written last

Each training step then picks two different views of every image in the
batch from the pool (BRCD needs t and t' of two views) and runs only the
heads. View v of image i is drawn with a generator seeded from (seed, i, v)
alone, so any single view can be recomputed directly and compared with the
cache (see :func:`augmented_view`). The fingerprint covers the student
backbone's weights, the teacher's fingerprint, the training images' bytes,
the recipe, V and the seed: any change makes a new cache instead of reusing
a stale one. The pool is finite, so the student sees V views per image
rather than a fresh view every epoch; V trades disk and build time for that.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write_json
from ..data import Augmenter
from ..errors import BrcdError
from ..models import HashModel

CACHE_VERSION = 1
META = "meta.json"
ARRAYS = ("student", "teacher_logits", "teacher_hidden", "clean")


def split_head(head: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the hash layer, logits) of a head: the hidden activation of an MLP head, the features of a linear one."""
    if isinstance(head, nn.Sequential):
        hidden = head[:-1](features)
        return hidden, head[-1](hidden)
    return features, head(features)


@torch.no_grad()
def teacher_outputs(teacher: HashModel, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hash-layer input, logits) of a frozen teacher on float views, resized to its input size."""
    size = teacher.config.image_size
    if views.shape[-1] != size or views.shape[-2] != size:
        views = F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return split_head(teacher.head, teacher.features(views))


def view_seed(seed: int, image: int, view: int) -> int:
    """A 63-bit generator seed for view ``view`` of image ``image`` (a source index), independent of batching."""
    return int(np.random.SeedSequence([seed, image, view]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def augmented_view(image: torch.Tensor, augmenter: Augmenter, seed: int, image_index: int, view: int) -> torch.Tensor:
    """View ``view`` of one uint8 image (3, H, W) as a float batch of one, exactly as the cache draws it."""
    g = torch.Generator().manual_seed(view_seed(seed, image_index, view))
    return augmenter(image[None].float().div(255.0), g)


def _digest_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.detach().contiguous().cpu().numpy().tobytes())


def cache_fingerprint(
    student: HashModel, teacher_fingerprint: str, images: torch.Tensor, image_indices: np.ndarray,
    augment: str, views: int, seed: int,
) -> tuple[str, dict]:
    """sha256 over everything the cached arrays depend on, and the readable part of it for meta.json."""
    h = hashlib.sha256()
    for name, tensor in sorted(student.backbone.state_dict().items()):
        h.update(name.encode())
        _digest_tensor(h, tensor)
    backbone_digest = h.hexdigest()
    h = hashlib.sha256()
    _digest_tensor(h, images)
    _digest_tensor(h, torch.from_numpy(np.asarray(image_indices, dtype=np.int64)))
    data_digest = h.hexdigest()
    inputs = {
        "version": CACHE_VERSION,
        "student_arch": student.config.arch,
        "student_image_size": student.config.image_size,
        "student_mean": list(student.config.mean),
        "student_std": list(student.config.std),
        "student_backbone_sha256": backbone_digest,
        "teacher_fingerprint": teacher_fingerprint,
        "data_sha256": data_digest,
        "images": int(images.shape[0]),
        "augment": augment,
        "views": int(views),
        "seed": int(seed),
    }
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return fingerprint, inputs


@dataclass
class FeatureCache:
    """Memory-mapped arrays of one cache folder (see the module docstring for the layout)."""

    path: Path
    fingerprint: str
    student: np.ndarray
    teacher_logits: np.ndarray
    teacher_hidden: np.ndarray
    clean: np.ndarray

    @property
    def views(self) -> int:
        return int(self.student.shape[1])

    @classmethod
    def open(cls, path: Path) -> "FeatureCache":
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
            arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAYS}
        except (OSError, ValueError) as exc:
            raise BrcdError(f"feature cache {path} is unreadable ({exc}); delete it to rebuild") from None
        return cls(path=path, fingerprint=meta["fingerprint"], **arrays)

    def draw_views(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Two different pool views per image: v1 uniform, v2 uniform among the others."""
        v = self.views
        first = torch.randint(0, v, (n,), generator=generator)
        second = (first + torch.randint(1, v, (n,), generator=generator)) % v
        return first.numpy(), second.numpy()

    def rows(self, positions: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student features, teacher logits, teacher hash-layer inputs) of view views[k] of image positions[k]."""
        return (
            torch.from_numpy(np.asarray(self.student[positions, views])),
            torch.from_numpy(np.asarray(self.teacher_logits[positions, views])),
            torch.from_numpy(np.asarray(self.teacher_hidden[positions, views])),
        )


def build_or_open(
    root: Path,
    student: HashModel,
    teacher: HashModel,
    teacher_fingerprint: str,
    images: torch.Tensor,
    image_indices: np.ndarray,
    augment: str,
    views: int,
    seed: int,
    batch_size: int = 256,
    log: Callable[[str], None] = print,
) -> FeatureCache:
    """Open the cache for these inputs under ``root``, building it first if it is missing.

    ``images`` are the uint8 training images (N, 3, H, W) and ``image_indices``
    their indices in the source (the per-view seeds use them). Building
    writes into a temporary folder renamed into place at the end, so an
    interrupted build never leaves a cache that looks complete.
    """
    if views < 2:
        raise BrcdError(f"the feature cache needs at least 2 views per image (t and t'), got {views}")
    if not student.config.freeze_backbone:
        raise BrcdError("the feature cache needs a frozen student backbone (--freeze-backbone)")
    fingerprint, inputs = cache_fingerprint(student, teacher_fingerprint, images, image_indices, augment, views, seed)
    root = Path(root)
    final = root / fingerprint[:24]
    if (final / META).is_file():
        cache = FeatureCache.open(final)
        if cache.fingerprint == fingerprint:
            log(f"feature cache: reusing {final} ({views} views of {images.shape[0]} images)")
            return cache
        shutil.rmtree(final)  # same prefix, other inputs: stale, and ours to replace
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _build(tmp, student, teacher, images, image_indices, Augmenter(augment), views, seed, batch_size, log)
        atomic_write_json(tmp / META, {"fingerprint": fingerprint, **inputs})
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / META).is_file():  # another process won the race only if it finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"feature cache: built {final}")
    return FeatureCache.open(final)


@torch.no_grad()
def _build(
    folder: Path, student: HashModel, teacher: HashModel, images: torch.Tensor, image_indices: np.ndarray,
    augmenter: Augmenter, views: int, seed: int, batch_size: int, log: Callable[[str], None],
) -> None:
    student.eval()
    teacher.eval()
    n = images.shape[0]
    probe = images[:1].float().div(255.0)
    d_s = student.features(probe).shape[1]
    t_hidden, t_logits = teacher_outputs(teacher, probe)
    shapes = {"student": (n, views, d_s), "teacher_logits": (n, views, t_logits.shape[1]),
              "teacher_hidden": (n, views, t_hidden.shape[1]), "clean": (n, d_s)}
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape)
              for name, shape in shapes.items()}
    log(f"feature cache: {views} views x {n} images (student {d_s}-d features, teacher logits and hash-layer inputs)")
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        arrays["clean"][start : start + len(chunk)] = student.features(chunk.float().div(255.0)).numpy()
        for v in range(views):
            batch = torch.cat([
                augmented_view(chunk[j], augmenter, seed, int(image_indices[start + j]), v) for j in range(len(chunk))
            ])
            arrays["student"][start : start + len(chunk), v] = student.features(batch).numpy()
            hidden, logits = teacher_outputs(teacher, batch)
            arrays["teacher_logits"][start : start + len(chunk), v] = logits.numpy()
            arrays["teacher_hidden"][start : start + len(chunk), v] = hidden.numpy()
    for array in arrays.values():
        array.flush()
    del arrays


class CachedValidator:
    """Validation mAP from frozen features: the heads are the only thing that changes between epochs.

    The validation queries' features are computed once here (the backbone is
    frozen, so they never change); the database side is the teacher's codes
    of the training images (ASHP) or, for a student alone, the student's codes
    of the cached test-time features of the training images (SSHP).
    """

    def __init__(self, student: HashModel, query_images: torch.Tensor, query_labels: np.ndarray, cache: FeatureCache,
                 db_labels: np.ndarray, top_k: Optional[int], db_codes: Optional[np.ndarray] = None) -> None:
        with torch.no_grad():
            student.eval()
            self.query_features = torch.cat([
                student.features(query_images[s : s + 256].float().div(255.0)) for s in range(0, len(query_images), 256)
            ]) if len(query_images) else torch.zeros((0, cache.student.shape[2]))
        self.clean = torch.from_numpy(np.array(cache.clean))
        self.query_labels, self.db_labels = query_labels, db_labels
        self.db_codes, self.top_k = db_codes, top_k

    def __call__(self, model: HashModel) -> float:
        from ..evaluation import mean_average_precision
        from ..kernels import pack_codes

        def packed(features: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                logits = model.head(features)
            return pack_codes(torch.where(logits >= 0, 1.0, -1.0).numpy())

        was_training = model.training
        model.eval()
        try:
            q = packed(self.query_features)
            d = self.db_codes if self.db_codes is not None else packed(self.clean)
        finally:
            model.train(was_training)
        return float(mean_average_precision(q, d, self.query_labels, self.db_labels, k=self.top_k))
