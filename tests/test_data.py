"""Data sources, splits and augmentation on real decoded images."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brcd_cli.data import Augmenter, load_batch, make_split, open_source, synthetic_source, to_tensor
from brcd_cli.data.sources import cifar10_source, digits_source, list_source
from brcd_cli.errors import DataError


def test_digits_are_the_real_sklearn_digits():
    src = digits_source()
    assert len(src) == 1797 and src.labels.shape == (1797, 10)
    assert (src.labels.sum(1) == 1).all()
    img = src.load(0)
    assert img.mode == "RGB" and img.size == (8, 8)
    batch = load_batch(src, [0, 1], 32)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8 and batch.max() > 200


def test_split_is_deterministic_disjoint_and_balanced():
    src = digits_source()
    a, b = make_split(src, seed=3), make_split(src, seed=3)
    for key in ("train", "database", "val_queries", "test_queries"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    queries = np.concatenate([a.val_queries, a.test_queries])
    assert len(queries) == 299 and len(np.intersect1d(queries, a.database)) == 0
    assert len(a.database) + len(queries) == 1797
    assert set(a.train) <= set(a.database)
    per_class = src.labels[queries].sum(0)
    assert per_class.min() >= 29 and per_class.max() <= 30
    assert not np.array_equal(make_split(src, seed=4).test_queries, a.test_queries)


def test_folder_source_labels_from_subfolders(image_folder: Path):
    src = open_source(str(image_folder))
    assert len(src) == 12 and src.class_names == ["blue", "red"]
    assert src.labels.sum() == 12
    assert src.labels[src.ids.index(str(image_folder / "red" / "red_0.jpg"))].tolist() == [0, 1]
    assert to_tensor(src.load(0), 16).shape == (3, 16, 16)


def test_list_file_paths_are_relative_to_the_file(image_folder: Path):
    lst = image_folder / "list.txt"
    lst.write_text("red/red_0.jpg 1 0 1\nblue/blue_1.png 0 1 0\n")
    src = list_source(lst)
    assert len(src) == 2 and src.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert src.load(1).size == (24, 20)
    lst.write_text("red/red_0.jpg 1 0\nblue/blue_1.png 0 1 0\n")
    with pytest.raises(DataError, match="expected 2 labels"):
        list_source(lst)


def test_corrupt_image_gives_data_error(image_folder: Path):
    bad = image_folder / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    src = open_source(str(image_folder))
    with pytest.raises(DataError, match="broken.jpg"):
        src.load(src.ids.index(str(bad)))


def test_missing_data_and_empty_folder(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_source(str(tmp_path / "empty"))


def _write_cifar(root: Path, n: int = 10) -> None:
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        batch[b"labels"] = [int(v) for v in batch[b"labels"]]
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_cifar_batches_follow_the_protocol(tmp_path: Path):
    _write_cifar(tmp_path / "cifar")
    src = open_source(str(tmp_path / "cifar"))
    assert src.name == "cifar10" and len(src) == 60
    split = make_split(src, seed=0, n_train=20)
    assert set(split.database) == set(range(50))
    assert set(split.val_queries) | set(split.test_queries) == set(range(50, 60))
    assert src.load(0).size == (32, 32)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_loader_refuses_code_in_pickles(tmp_path: Path, capsys):
    _write_cifar(tmp_path / "cifar")
    with open(tmp_path / "cifar" / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        cifar10_source(tmp_path / "cifar")
    assert "pwned" not in capsys.readouterr().out


def test_synthetic_source_is_seeded():
    a, b = synthetic_source(n=20, seed=5), synthetic_source(n=20, seed=5)
    assert np.array_equal(np.asarray(a.load(3)), np.asarray(b.load(3)))
    assert not np.array_equal(np.asarray(a.load(3)), np.asarray(synthetic_source(n=20, seed=6).load(3)))


@pytest.mark.parametrize("recipe", ["photo", "digits"])
def test_augmenter_keeps_shape_and_range_and_varies(recipe):
    x = torch.rand(6, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    aug = Augmenter(recipe)
    v1, v2 = aug(x, g), aug(x, g)
    assert v1.shape == x.shape and v1.min() >= 0 and v1.max() <= 1
    assert not torch.allclose(v1, v2)


def test_augmenter_rejects_unknown_recipe():
    with pytest.raises(ValueError, match="unknown augmentation"):
        Augmenter("sepia")
