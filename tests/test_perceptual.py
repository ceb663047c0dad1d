"""Perceptual hashers (perceptual:dct64, perceptual:dct256): the same bits as a plain numpy pHash, exact and
batch-independent, stable under the edits near-duplicates are made of, and usable wherever a model is."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.fft import dctn

from brcd_cli.errors import ModelError
from brcd_cli.models import load_encoder, read_config
from brcd_cli.models.perceptual import HASHERS, PREFIX, dct_basis, names, projection, resolve
from conftest import TINY_ARCH, run_cli

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _reference_bits(rgb: np.ndarray, dct: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A numpy pHash written independently of the module: integer BT.601 luma, box mean down to ``dct`` x ``dct``
    (the input side a multiple of it), scipy's orthonormal 2-D DCT-II, top-left ``block`` x ``block``, each
    coefficient > the median of the AC ones. Returns the bits and how far each coefficient is from that median."""
    x = rgb.astype(np.int64)
    gray = (299 * x[..., 0] + 587 * x[..., 1] + 114 * x[..., 2] + 500) // 1000
    f = gray.shape[0] // dct
    small = gray.reshape(dct, f, dct, f).mean(axis=(1, 3))
    coef = dctn(small, type=2, norm="ortho")[:block, :block].ravel()
    median = np.median(coef[1:])
    return coef > median, np.abs(coef - median) / np.abs(coef[1:]).max()


def _hasher_input(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)


def _hamming(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a != b).sum())


def _pipeline_codes(hasher, paths: list[Path]) -> torch.Tensor:
    """Codes of image files decoded the way brcd encode and brcd search decode them."""
    from brcd_cli.pipeline import read_query_image

    size = hasher.config.image_size
    return hasher.codes(torch.cat([read_query_image(p, size) for p in paths]).float().div(255.0))


@pytest.mark.parametrize("name", sorted(HASHERS))
def test_bits_match_a_numpy_reference(name: str):
    spec = HASHERS[name]
    hasher = resolve(PREFIX + name)
    rng = np.random.default_rng(0)
    images = [np.asarray(_photo(p).resize((spec.image_size, spec.image_size), Image.BILINEAR)) for p in PHOTOS]
    images += [rng.integers(0, 256, (spec.image_size, spec.image_size, 3), dtype=np.uint8) for _ in range(3)]
    ours = hasher.bits(_hasher_input(images)).numpy()
    for i, rgb in enumerate(images):
        ref, margin = _reference_bits(rgb, spec.dct, spec.block)
        # The module's DCT basis is rounded to 12 fractional bits; only a coefficient within that rounding of the
        # median may land on the other side of it.
        differ = ours[i] != ref
        assert differ.sum() <= 1 and (margin[differ] < 1e-3).all(), (name, i, np.flatnonzero(differ))
    assert (ours[:, 0]).all()  # DC: the mean brightness is above the AC median of a non-black image
    assert (ours[:, 1:].sum(axis=1) == (spec.bits - 1) // 2).all()  # the median of an odd count: half the AC bits


def test_coefficients_are_exact_integers_whatever_the_batch_or_dtype():
    """The float64 products are exact (integer operands, sums below 2**53): an int64 numpy computation gives the
    same numbers, and an image's bits do not depend on its batch, the input dtype or the thread count."""
    from brcd_cli.models.perceptual import dct_coefficients, luma

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(7)]
    gray = luma(_hasher_input(images))
    ours = dct_coefficients(gray, 32, 8)
    p = projection(32, 8, 64)
    exact = np.stack([p @ g @ p.T for g in gray.numpy().astype(np.int64)])
    assert np.array_equal(ours.numpy(), exact.astype(np.float64)) and np.abs(exact).max() < 2 ** 53
    hasher = resolve("perceptual:dct64")
    whole = hasher.codes(_hasher_input(images))
    assert all(torch.equal(hasher.codes(_hasher_input([im]))[0], whole[i]) for i, im in enumerate(images))
    uint8 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(hasher.codes(uint8), whole)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(hasher.codes(_hasher_input(images)), whole)
    finally:
        torch.set_num_threads(threads)


def test_the_recipe_and_a_hash_are_pinned():
    """A change to any step changes codes already written: it must come with a new format (and so a new
    fingerprint), never silently. The golden bits are those of a fixed gradient image."""
    assert names() == ["perceptual:dct64", "perceptual:dct256"]
    hasher = resolve("perceptual:dct64")
    config, fingerprint = read_config(Path("perceptual:dct64"))
    assert (config.bits, config.image_size, config.arch) == (64, 64, "perceptual:dct64")
    assert fingerprint == hasher.fingerprint == load_encoder(Path("perceptual:dct64"))[1]
    assert fingerprint == "3cb206e6017caef4f07626551585a8c1a12de6f38cb8c1d2112b9b2dcc9bc8ef"
    assert resolve("perceptual:dct256").fingerprint != fingerprint
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([(x * 4) % 256, (y * 3 + x) % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    bits = hasher.bits(_hasher_input([image]))[0].numpy()
    assert np.packbits(bits).tobytes().hex() == GOLDEN_DCT64
    assert dct_basis(32)[0, 0] == round(4096 / np.sqrt(32))


GOLDEN_DCT64 = "80021f3f3f3e7c38"  # bits of the gradient image above, packed (bit 0 = DC first)


def test_near_duplicates_stay_close_and_other_photos_are_far(tmp_path: Path):
    """Through the real decoding: a half-size copy, a JPEG at quality 25 and a 95 % resize of each photograph stay
    within a few bits of it; any two different photographs are far apart."""
    hasher = resolve("perceptual:dct64")
    files = {}
    for name in PHOTOS:
        photo = _photo(name)
        variants = {"orig": (photo, 92), "half": (photo.resize((photo.width // 2, photo.height // 2), Image.BICUBIC), 90),
                    "q25": (photo, 25), "95": (photo.resize((int(photo.width * .95), int(photo.height * .95)), Image.BICUBIC), 90)}
        for kind, (image, quality) in variants.items():
            path = tmp_path / f"{name}-{kind}.jpg"
            image.save(path, quality=quality)
            files[name, kind] = path
    keys = list(files)
    codes = dict(zip(keys, _pipeline_codes(hasher, [files[k] for k in keys])))
    for name in PHOTOS:
        for kind in ("half", "q25", "95"):
            assert _hamming(codes[name, "orig"], codes[name, kind]) <= 4, (name, kind)
    for i, a in enumerate(PHOTOS):
        for b in PHOTOS[i + 1:]:
            assert _hamming(codes[a, "orig"], codes[b, "orig"]) >= 16, (a, b)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Four real photographs, each with a half-size copy and a quality-25 copy."""
    root = tmp_path / "images"
    root.mkdir()
    for name in PHOTOS:
        photo = _photo(name)
        photo.save(root / f"{name}.jpg", quality=92)
        photo.resize((photo.width // 2, photo.height // 2), Image.BICUBIC).save(root / f"{name}~half.jpg", quality=90)
        photo.save(root / f"{name}~q25.jpg", quality=25)
    return root


def test_encode_duplicates_and_search_through_the_cli(photo_folder: Path, tmp_path: Path, capsys):
    from brcd_cli.codes import read_codes

    out = tmp_path / "phash.bin"
    code, _, err = run_cli(["encode", str(photo_folder), "--out", str(out), "--model", "perceptual:dct64"], capsys)
    assert code == 0, err
    with read_codes(out) as codes:
        assert codes.bits == 64 and codes.producer == codes.code_space == resolve("perceptual:dct64").fingerprint
        assert codes.metadata["model"] == codes.metadata["arch"] == "perceptual:dct64"
    code, text, err = run_cli(["duplicates", str(out), "--radius", "6", "--json"], capsys)
    assert code == 0, err
    groups = [sorted(Path(m["id"]).name for m in g["members"]) for g in json.loads(text)["groups"]]
    assert groups == [[f"{n}.jpg", f"{n}~half.jpg", f"{n}~q25.jpg"] for n in sorted(PHOTOS)]
    code, text, err = run_cli(["search", str(photo_folder / "coffee~q25.jpg"), "--codes", str(out),
                               "--model", "perceptual:dct64", "--radius", "6", "--json"], capsys)
    assert code == 0, err
    assert "coffee.jpg" in text and "coffee~half.jpg" in text and "astronaut" not in text


def test_learned_and_perceptual_codes_are_never_mixed(photo_folder: Path, tmp_path: Path, capsys):
    from brcd_cli.models import HashModel, ModelConfig, save_model

    learned = tmp_path / "learned"
    save_model(HashModel(ModelConfig(arch=TINY_ARCH, bits=64, image_size=32)), learned)
    phash, codes = tmp_path / "phash.bin", tmp_path / "learned.bin"
    assert run_cli(["encode", str(photo_folder), "--out", str(phash), "--model", "perceptual:dct64"], capsys)[0] == 0
    assert run_cli(["encode", str(photo_folder), "--out", str(codes), "--model", str(learned)], capsys)[0] == 0
    query = str(photo_folder / "coffee.jpg")
    for db, model in ((phash, str(learned)), (codes, "perceptual:dct64")):
        code, text, err = run_cli(["search", query, "--codes", str(db), "--model", model, "-k", "3"], capsys)
        assert code != 0 and text == "" and "another code space" in err and len(err.strip().splitlines()) == 1
        assert "(perceptual:dct64)" in err  # the hasher is named, on whichever side it is
    code, _, err = run_cli(["encode", str(photo_folder), "--out", str(phash), "--model", "perceptual:dct64", "--update"],
                           capsys)
    assert code == 0, err  # an update with the same hasher keeps the codes


def test_unknown_hasher_is_one_line(photo_folder: Path, tmp_path: Path, capsys):
    with pytest.raises(ModelError, match="built in: perceptual:dct64"):
        resolve("perceptual:md5")
    code, _, err = run_cli(["encode", str(photo_folder), "--out", str(tmp_path / "x.bin"), "--model", "perceptual:md5"], capsys)
    assert code == 4 and err.strip().splitlines() == [
        "error: unknown perceptual hasher 'perceptual:md5'; built in: perceptual:dct64, perceptual:dct256"]
    with pytest.raises(ModelError, match="shape"):
        resolve("perceptual:dct64").codes(torch.zeros(1, 4, 64, 64))
