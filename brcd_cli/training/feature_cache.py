"""A disk cache of frozen-backbone features of augmented views, shared by every run that needs them.

In the paper's setting every backbone is frozen (the teacher's while it
trains its hash head, the teacher's again while a student distils from it,
and the student's): each epoch would recompute the same expensive forwards on
fresh augmented views. Instead brcd draws a pool of V augmented views of
every training image once (a :class:`ViewSet`) and stores, per frozen
backbone, memory-mapped .npy arrays:

    views.npy   (N, V, d) float32  backbone features of view v of image i
    clean.npy   (N, d)    float32  backbone features of the test-time image (the validation database)
    meta.json                      the fingerprint inputs, written last

A training step then picks two different views of every image in the batch
and runs only the heads: the teacher's head on the teacher's cached features
gives its logits (and, for FitNet, its hash-layer input) of exactly the view
the student sees. View v of image i is drawn with a generator seeded from
(seed, i, v) alone, at the view set's size, then resized to each network's
input size, so any single view can be recomputed directly and compared with
the cache (see :meth:`ViewSet.view`).

One cache per (backbone weights, input size, normalisation, view set, test
images): a teacher's training cache is the teacher side of every student of
it, and a student backbone's cache serves every method and seed of a grid
that uses the same views. The fingerprint covers all of those inputs, so a
change makes a new cache instead of reusing a stale one. The pool is finite:
a run sees V views per image rather than a fresh view every epoch; V trades
disk and build time for that.
"""
from __future__ import annotations

import copy
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
from torch import nn

from ..atomic import atomic_write_json
from ..data import Augmenter
from ..errors import BrcdError
from ..encoding import features_of, resized
from ..models import HashModel, backbone_digest, sign_codes
from ..models.hashing import digest_tensor
from ..progress import Progress

CACHE_VERSION = 2
META = "meta.json"
ARRAYS = ("views", "clean")


def split_head(head: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the hash layer, logits) of a head: the hidden activation of an MLP head, the features of a linear one."""
    if isinstance(head, nn.Sequential):
        hidden = head[:-1](features)
        return hidden, head[-1](hidden)
    return features, head(features)


@torch.no_grad()
def teacher_outputs(teacher: HashModel, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hash-layer input, logits) of a frozen teacher on float views, resized to its input size."""
    return split_head(teacher.head, teacher.features(resized(views, teacher.config.image_size)))


def view_seed(seed: int, image: int, view: int) -> int:
    """A 63-bit generator seed for view ``view`` of image ``image`` (a source index), independent of batching."""
    return int(np.random.SeedSequence([seed, image, view]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def augmented_view(image: torch.Tensor, augmenter: Augmenter, seed: int, image_index: int, view: int) -> torch.Tensor:
    """View ``view`` of one uint8 image (3, H, W) as a float batch of one, exactly as the cache draws it."""
    g = torch.Generator().manual_seed(view_seed(seed, image_index, view))
    return augmenter(image[None].float().div(255.0), g)


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        digest_tensor(h, t)
    return h.hexdigest()


@dataclass(frozen=True)
class ViewSet:
    """V augmented views of N uint8 images (at the view size): the positives a cached run draws from.

    ``indices`` are the images' indices in the source (the per-view seeds use
    them, so a view does not depend on batching or on which other images are
    in the set). ``digest`` identifies the set for cache fingerprints.
    """

    images: torch.Tensor
    indices: np.ndarray
    augment: str
    views: int
    seed: int
    digest: str

    @classmethod
    def of(cls, images: torch.Tensor, indices: np.ndarray, augment: str, views: int, seed: int) -> "ViewSet":
        if views < 2:
            raise BrcdError(f"the feature cache needs at least 2 views per image (t and t'), got {views}")
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) != images.shape[0]:
            raise BrcdError(f"{images.shape[0]} images but {len(indices)} indices for the view set")
        Augmenter(augment)  # an unknown recipe fails here, before any work
        data = tensor_digest(images, torch.from_numpy(indices))
        digest = hashlib.sha256(json.dumps([data, augment, int(views), int(seed)]).encode()).hexdigest()
        return cls(images, indices, augment, int(views), int(seed), digest)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def view(self, position: int, v: int) -> torch.Tensor:
        """View ``v`` of image ``position`` as a float batch of one at the view size."""
        return augmented_view(self.images[position], Augmenter(self.augment), self.seed, int(self.indices[position]), v)

    def batch(self, positions: range, v: int) -> torch.Tensor:
        return torch.cat([self.view(p, v) for p in positions])


def _clean_inputs(model: HashModel, clean_images: torch.Tensor) -> dict:
    """What a cache's test-time features depend on: the backbone, its input and the images, not the views."""
    return {
        "version": CACHE_VERSION,
        "arch": model.config.arch,
        "image_size": model.config.image_size,
        "mean": list(model.config.mean),
        "std": list(model.config.std),
        "backbone_sha256": backbone_digest(model),
        "clean_sha256": tensor_digest(clean_images),
    }


def cache_fingerprint(model: HashModel, view_set: ViewSet, clean_images: torch.Tensor) -> tuple[str, dict]:
    """sha256 over everything the cached arrays depend on, and the readable part of it for meta.json."""
    inputs = {
        **_clean_inputs(model, clean_images),
        "view_set_sha256": view_set.digest,
        "view_size": view_set.size,
        "images": len(view_set),
        "augment": view_set.augment,
        "views": view_set.views,
        "seed": view_set.seed,
    }
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return fingerprint, inputs


@dataclass
class FeatureCache:
    """Memory-mapped arrays of one cache folder (see the module docstring for the layout)."""

    path: Path
    fingerprint: str
    views: np.ndarray
    clean: np.ndarray

    @property
    def n_views(self) -> int:
        return int(self.views.shape[1])

    @property
    def dim(self) -> int:
        return int(self.views.shape[2])

    @classmethod
    def open(cls, path: Path) -> "FeatureCache":
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
            arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise BrcdError(f"feature cache {path} is unreadable ({exc}); delete it to rebuild") from None
        return cls(path=path, fingerprint=meta["fingerprint"], **arrays)

    def draw_views(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Two different pool views per image: v1 uniform, v2 uniform among the others."""
        v = self.n_views
        first = torch.randint(0, v, (n,), generator=generator)
        second = (first + torch.randint(1, v, (n,), generator=generator)) % v
        return first.numpy(), second.numpy()

    def rows(self, positions: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """Features of view views[k] of image positions[k]."""
        return torch.from_numpy(np.asarray(self.views[positions, views]))

    def clean_features(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self.clean))


def default_cache_root() -> Optional[Path]:
    """``BRCD_CACHE_DIR`` when set: one place for every run's caches (else each run's default folder)."""
    root = os.environ.get("BRCD_CACHE_DIR")
    return Path(root) if root else None


def cache_root(explicit: Optional[Path], owner: Path) -> Path:
    """Where a run keeps its caches: the folder it was given, else ``BRCD_CACHE_DIR``, else ``OWNER/feature-cache``
    (the teacher's folder, so that its students and floors find the caches it built)."""
    return Path(explicit) if explicit else default_cache_root() or Path(owner) / "feature-cache"


def build_or_open(
    root: Path,
    model: HashModel,
    view_set: ViewSet,
    clean_images: torch.Tensor,
    batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> FeatureCache:
    """Open the cache of ``model``'s backbone on these views under ``root``, building it first if missing.

    ``clean_images`` are the uint8 test-time images (N, 3, H, W) of the same
    items, at the network's input size. The backbone must not change while
    the cache is in use: callers pass a frozen one. Building writes into a
    temporary folder renamed into place at the end, so an interrupted build
    never leaves a cache that looks complete, and two runs racing to build
    the same cache both end with one good copy.
    """
    if clean_images.shape[0] != len(view_set):
        raise BrcdError(f"{clean_images.shape[0]} test-time images for a view set of {len(view_set)}")
    fingerprint, inputs = cache_fingerprint(model, view_set, clean_images)
    root = Path(root)
    final = root / fingerprint[:24]
    if (final / META).is_file():
        cache = FeatureCache.open(final)
        if cache.fingerprint == fingerprint:
            log(f"feature cache: reusing {final} ({model.config.arch}, {view_set.views} views of {len(view_set)} images)")
            return cache
        shutil.rmtree(final)  # same prefix, other inputs: stale, and ours to replace
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _build(tmp, model, view_set, clean_images, batch_size, log)
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


def find_clean_features(root: Optional[Path], model: HashModel, clean_images: torch.Tensor) -> Optional[torch.Tensor]:
    """The test-time features of ``clean_images`` through ``model``'s backbone from any cache under ``root``, or None.

    A closed-form head (LSH, ITQ) needs only these features, and a teacher
    on the same backbone and training images has already computed them for its
    cache, whatever its views; looking them up by the inputs they depend on
    saves a second pass of the backbone over the training images.
    """
    if root is None or not Path(root).is_dir():
        return None
    want = {**_clean_inputs(model, clean_images), "images": int(clean_images.shape[0])}
    for meta_path in sorted(Path(root).glob(f"*/{META}")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and all(meta.get(key) == value for key, value in want.items()):
            try:
                return FeatureCache.open(meta_path.parent).clean_features()
            except BrcdError:
                continue
    return None


def _inference_features(model: HashModel) -> Callable[[torch.Tensor], np.ndarray]:
    """Backbone features of float images as a cache computes them.

    A private copy in the inference layout (channels-last: several times faster
    for depthwise convolutions on a CPU); the features equal the training
    layout's up to float rounding, so everything that must agree with a
    cache's features to the bit computes them through this one function.
    """
    net = copy.deepcopy(model).prepare_for_inference()
    size = model.config.image_size

    def features(x: torch.Tensor) -> np.ndarray:
        return net.features(resized(x, size).contiguous(memory_format=torch.channels_last)).numpy()

    return features


@torch.no_grad()
def clean_features_of(model: HashModel, clean_images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The test-time features a cache of these images would hold (same network layout, same batches), computed now."""
    features = _inference_features(model)
    parts = [features(clean_images[s : s + batch_size].float().div(255.0)) for s in range(0, len(clean_images), batch_size)]
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros((0, 0))


@torch.no_grad()
def _build(folder: Path, model: HashModel, view_set: ViewSet, clean_images: torch.Tensor, batch_size: int,
           log: Callable[[str], None]) -> None:
    features = _inference_features(model)
    n, v = len(view_set), view_set.views
    d = features(clean_images[:1].float().div(255.0)).shape[1]
    views = np.lib.format.open_memmap(folder / "views.npy", mode="w+", dtype=np.float32, shape=(n, v, d))
    clean = np.lib.format.open_memmap(folder / "clean.npy", mode="w+", dtype=np.float32, shape=(n, d))
    log(f"feature cache: {model.config.arch} at {model.config.image_size}px, {v} views x {n} images + the {n} test-time images ({d}-d features)")
    with Progress(f"feature cache {model.config.arch}", total=n * (v + 1), unit="images", log=log) as progress:
        for start in range(0, n, batch_size):
            positions = range(start, min(start + batch_size, n))
            clean[start : positions.stop] = features(clean_images[start : positions.stop].float().div(255.0))
            progress.advance(len(positions))
            for k in range(v):
                views[start : positions.stop, k] = features(view_set.batch(positions, k))
                progress.advance(len(positions))
    views.flush()
    clean.flush()
    del views, clean


class CachedValidator:
    """Validation mAP from frozen features: the heads are the only thing that changes between epochs.

    The validation queries' features are computed once here (the backbone is
    frozen, so they never change); the database side is either fixed codes
    (the teacher's, for ASHP) or the model's codes of cached test-time
    features of the training images (a teacher, or a student alone: SSHP).
    """

    def __init__(self, model: HashModel, query_images: torch.Tensor, query_labels: np.ndarray, db_features: torch.Tensor,
                 db_labels: np.ndarray, top_k: Optional[int], db_codes: Optional[np.ndarray] = None) -> None:
        self.query_features = features_of(model, query_images)
        self.db_features = db_features
        self.query_labels, self.db_labels = query_labels, db_labels
        self.db_codes, self.top_k = db_codes, top_k

    def __call__(self, model: HashModel) -> float:
        from ..evaluation import mean_average_precision
        from ..kernels import pack_codes

        def packed(features: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return pack_codes(sign_codes(model.head(features)).numpy())

        was_training = model.training
        model.eval()
        try:
            q = packed(self.query_features)
            d = self.db_codes if self.db_codes is not None else packed(self.db_features)
        finally:
            model.train(was_training)
        return float(mean_average_precision(q, d, self.query_labels, self.db_labels, k=self.top_k))
