"""brcd serve decodes a large JPEG upload (and a served item's file) as brcd encode and brcd search do: draft by
default, every pixel with --exact-decode; checked through real HTTP requests to a real server on loopback."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from brcd_cli.codes import read_codes
from brcd_cli.serve import create_app
from brcd_cli.serve.service import SearchService
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from conftest import TINY_ARCH, run_cli
from test_serve import call, multipart, running

QUIET = lambda _: None  # noqa: E731
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
FILES = 24  # seeded crops: with a tiny model few codes move between decodings, these include some that do


def _large_jpegs(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """skimage.data photographs, cropped (30-70 % of the width, 4:3) and upscaled to 2000 x 1500 with a little
    noise, saved as camera JPEGs: a 16 px model drafts them at 1/8 (250 x 188)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for k in range(count):
        name = PHOTOS[k % len(PHOTOS)]
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = photo.size
        f = rng.uniform(0.3, 0.7)
        cw, ch = int(w * f), int(w * f * 0.75)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, max(1, h - ch + 1)))
        big = np.asarray(photo.crop((x, y, x + cw, y + ch)).resize((2000, 1500), Image.BICUBIC), dtype=np.float32)
        big += rng.normal(0, 4, size=big.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        yield f"{k:02d}-{name}.jpg", buffer.getvalue()


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> dict[str, Path]:
    """A tiny teacher, a folder of 2000 x 1500 JPEGs, and its codes encoded with the draft and the exact decoding."""
    from brcd_cli.data import synthetic_source

    root = tmp_path_factory.mktemp("serve-draft")
    images = root / "images"
    images.mkdir()
    for name, data in _large_jpegs(FILES):
        (images / name).write_bytes(data)
    model = root / "model"
    train_teacher(synthetic_source(n=48), model, TeacherOptions(arch=TINY_ARCH, bits=64, image_size=16, pretrained="none",
                                                                fit=FitOptions(epochs=1, batch_size=16)), log=QUIET)
    out = {"root": root, "images": images, "model": model}
    for decoding, flags in (("draft", []), ("exact", ["--exact-decode"])):
        out[decoding] = root / f"{decoding}.codes"
        assert run_cli(["encode", str(images), "--model", str(model), "--out", str(out[decoding]), *flags])[0] == 0
    return out


def _moved(large: dict[str, Path]) -> list[str]:
    """The files whose draft code differs from their exact code: where a server with the wrong decoding is caught."""
    with read_codes(large["draft"]) as a, read_codes(large["exact"]) as b:
        assert list(a.ids) == list(b.ids)
        differ = np.bitwise_xor(np.asarray(a.codes), np.asarray(b.codes)).any(axis=1)
        return [item_id for item_id, d in zip(a.ids, differ) if d]


@pytest.fixture(scope="module", params=["draft", "exact"])
def server(request, large) -> Iterator[tuple[str, str]]:
    service = SearchService(large["model"], [large[request.param]], exact_decode=request.param == "exact")
    try:
        with running(create_app(service)) as url:
            yield request.param, url
    finally:
        service.close()


def _hits(body: bytes) -> list[tuple[int, int, str]]:
    return [(h["rank"], h["distance"], h["id"]) for h in json.loads(body)["results"]]


def _own_distance(hits: list[tuple[int, int, str]], path: Path) -> int:
    return next(d for _, d, item_id in hits if Path(item_id).name == path.name)


def test_some_large_jpegs_change_code_with_the_decoding(large) -> None:
    # the test below only tells the decodings apart on these files; if none moved, it would prove nothing
    assert _moved(large), "no file's code differs between draft and exact decoding: choose other pictures"


def test_a_large_upload_gets_the_code_encode_gave_its_file(server, large, capsys) -> None:
    decoding, url = server
    moved = {Path(i).name for i in _moved(large)}
    flags = ["--exact-decode"] if decoding == "exact" else []
    for path in sorted(large["images"].glob("*.jpg")):
        raw = path.read_bytes()
        status, body, _ = call(url, f"/api/search?k={FILES}", raw, {"Content-Type": "application/octet-stream"})
        assert status == 200, body
        hits = _hits(body)
        assert _own_distance(hits, path) == 0, (decoding, path.name, path.name in moved)
        code, out, err = run_cli(["search", str(path), "--codes", str(large[decoding]), "--model", str(large["model"]),
                                  "--json", "-k", str(FILES), *flags], capsys)
        assert code == 0, err
        assert hits == [(h["rank"], h["distance"], h["id"]) for h in json.loads(out)["results"]]
        form, headers = multipart("image", path.name, raw)
        status, body, _ = call(url, "/api/search?radius=0", form, headers)
        assert status == 200 and path.name in {Path(i).name for _, _, i in _hits(body)}


def test_searching_with_a_served_item_decodes_its_file_as_encode_did(server, large) -> None:
    decoding, url = server
    for position in range(FILES):
        status, body, _ = call(url, f"/api/search?k={FILES}&item={position}", method="POST")
        assert status == 200, body
        hits = json.loads(body)["results"]
        own = next(h for h in hits if h["position"] == position)
        assert own["distance"] == 0, (decoding, own["id"])
