"""The ``photos`` instance-retrieval set: real photographs from installed wheels, cut and jittered by seed."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from brcd_cli.data import make_split, open_source, photos_source
from brcd_cli.data import photos as photos_module
from brcd_cli.errors import DataError
from brcd_cli.search.base import Item

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")


def _pixels(source, i: int) -> np.ndarray:
    return np.asarray(source.load(i))


def test_forty_balanced_classes_of_labelled_items():
    src = photos_source(n_per_class=3, size=32)
    assert len(src) == 120 and src.name == "photos" and src.augment == "photo"
    assert len(src.class_names) == 40 == len(set(src.class_names))
    assert src.labels.shape == (120, 40) and src.labels.dtype == np.uint8
    assert (src.labels.sum(1) == 1).all() and (src.labels.sum(0) == 3).all()
    assert len(set(src.ids)) == 120
    for i in (0, 59, 119):
        name = src.class_names[int(src.labels[i].argmax())]
        assert src.ids[i].startswith(f"photos/{name}/")
    assert src.ids[3] == f"photos/{src.class_names[1]}/0000"
    # both halves of every photograph, each its own class
    photos = {n.rsplit("-", 1)[0] for n in src.class_names}
    assert len(photos) == 20


def test_default_size_is_a_thousand_items():
    src = photos_source()
    assert len(src) == 1000 and (src.labels.sum(0) == 25).all()


def test_every_image_is_rgb_at_the_asked_size():
    src = photos_source(n_per_class=1, size=48)
    for i in range(len(src)):  # one from every class, grayscale photographs included
        image = src.load(i)
        assert image.mode == "RGB" and image.size == (48, 48)


def test_two_calls_give_identical_pixels_and_another_seed_other_crops():
    a, b = photos_source(n_per_class=2, size=32), photos_source(n_per_class=2, size=32)
    other = photos_source(n_per_class=2, size=32, seed=1)
    for i in (0, 1, 40, 79):
        assert np.array_equal(_pixels(a, i), _pixels(b, i))
    assert sum(not np.array_equal(_pixels(a, i), _pixels(other, i)) for i in range(0, 80, 8)) == 10


def test_an_item_regenerates_alone_and_does_not_depend_on_the_set_size():
    batch = photos_source(n_per_class=4, size=32)
    expected = {i: _pixels(batch, i) for i in range(len(batch))}
    alone = photos_source(n_per_class=4, size=32)
    for i in (77, 5, 160 - 1):  # out of order, in fresh sources
        assert np.array_equal(_pixels(alone, i), expected[i])
    deeper = photos_source(n_per_class=9, size=32)
    position = {item_id: j for j, item_id in enumerate(deeper.ids)}
    for i in (0, 13, 150):
        assert np.array_equal(_pixels(deeper, position[batch.ids[i]]), expected[i])


def test_items_of_one_class_differ():
    src = photos_source(n_per_class=6, size=32)
    for c in (0, 12, 39):
        images = [_pixels(src, c * 6 + k) for k in range(6)]
        assert all(not np.array_equal(images[j], images[k]) for j in range(6) for k in range(j + 1, 6))


def test_open_source_names_photos_and_photos_n():
    assert len(open_source("photos")) == 1000
    five = open_source("photos:5")
    assert len(five) == 200 and (five.labels.sum(0) == 5).all()
    with pytest.raises(DataError, match="photos:N"):
        open_source("photos:many")
    with pytest.raises(DataError, match="at least 1"):
        open_source("photos:0")


def test_unknown_data_names_the_built_in_sets():
    with pytest.raises(DataError, match=r"photos\[:N\]"):
        open_source("/no/such/data")


def test_missing_scikit_image_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(photos_module, "_photo_cache", {})
    real = importlib.util.find_spec
    monkeypatch.setattr(photos_module.importlib.util, "find_spec", lambda name: None if name == "skimage" else real(name))
    with pytest.raises(DataError, match=r"pip install scikit-image"):
        photos_source(n_per_class=1)


def test_held_out_split_is_class_balanced():
    src = photos_source(n_per_class=10, size=32)
    split = make_split(src, seed=0, n_queries=80)
    queries = np.concatenate([split.val_queries, split.test_queries])
    assert len(queries) == 80 and len(np.intersect1d(queries, split.database)) == 0
    assert len(split.database) == 320
    assert (src.labels[queries].sum(0) == 2).all()
    assert (src.labels[split.database].sum(0) == 8).all()
    full = photos_source()
    default = make_split(full, seed=0)
    per_class = full.labels[np.concatenate([default.val_queries, default.test_queries])].sum(0)
    assert per_class.sum() == 166 and per_class.min() >= 4 and per_class.max() <= 5


def test_served_thumbnails_find_photos_items(tmp_path: Path):
    from brcd_cli.serve.images import ItemImages

    src = photos_source(n_per_class=30)
    wanted = [0, 29, 31 * 30 + 28]  # items past the default 25 per class too
    collection = SimpleNamespace(count=len(wanted), item=lambda j: Item(id=src.ids[wanted[j]], index=j))
    images = ItemImages(collection, [tmp_path])
    for j, i in enumerate(wanted):
        assert np.array_equal(np.asarray(images.image(j)), _pixels(src, i))
        assert images.thumbnail(j)[:2] == b"\xff\xd8"
