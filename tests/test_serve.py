"""brcd serve: a real uvicorn server on loopback, its API against the CLI, its refusals, and the page in Chromium."""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
from PIL import Image

from brcd_cli.serve import create_app
from brcd_cli.serve.runner import open_socket, server_for
from brcd_cli.serve.service import SearchService
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from conftest import TINY_ARCH, run_cli

REPO = Path(__file__).resolve().parents[1]
QUIET = lambda _: None  # noqa: E731


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """A tiny teacher, a folder of real image files and its codes file."""
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(3)
    images = root / "images"
    for cls, colour in (("red", (210, 40, 30)), ("green", (40, 190, 60)), ("blue", (30, 40, 200))):
        (images / cls).mkdir(parents=True)
        for i in range(8):
            arr = np.clip(np.array(colour) + rng.normal(0, 35, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(images / cls / f"{cls}_{i}.{'png' if i % 2 else 'jpg'}")
    model = root / "model"
    train_teacher(_synthetic(), model, TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                                                      fit=FitOptions(epochs=1, batch_size=16)), log=QUIET)
    codes = root / "codes.bin"
    assert run_cli(["encode", str(images), "--model", str(model), "--out", str(codes)])[0] == 0
    return {"root": root, "images": images, "model": model, "codes": codes}


def _synthetic():
    from brcd_cli.data import synthetic_source

    return synthetic_source(n=48)


@contextmanager
def running(app) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free loopback port; stopped (and joined) afterwards."""
    sock = open_socket("127.0.0.1", 0)
    server = server_for(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        thread.join(0.01)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def service(served) -> Iterator[SearchService]:
    svc = SearchService(served["model"], [served["codes"]])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def url(service) -> Iterator[str]:
    with running(create_app(service)) as base:
        yield base


def call(url: str, path: str, data: Optional[bytes] = None, headers: Optional[dict] = None,
         method: Optional[str] = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


def multipart(field: str, filename: str, payload: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def error_of(status: int, body: bytes, ctype: str) -> str:
    assert 400 <= status < 500 and ctype.startswith("application/json"), (status, body[:200])
    message = json.loads(body)["error"]
    assert message and "\n" not in message
    return message


def test_api_answers_what_the_cli_answers(served, url, capsys) -> None:
    for query in (served["images"] / "red" / "red_1.png", served["images"] / "blue" / "blue_2.jpg"):
        for flag, param in ((["-k", "7"], "k=7"), (["--radius", "3"], "radius=3")):
            code, out, err = run_cli(["search", str(query), "--codes", str(served["codes"]), "--model", str(served["model"]),
                                      "--json", *flag], capsys)
            assert code == 0, err
            want = [(h["rank"], h["distance"], h["id"]) for h in json.loads(out)["results"]]
            raw = query.read_bytes()
            status, body, _ = call(url, f"/api/search?{param}", raw, {"Content-Type": "application/octet-stream"})
            assert status == 200, body
            answer = json.loads(body)
            assert [(h["rank"], h["distance"], h["id"]) for h in answer["results"]] == want and want
            assert set(answer["timing_ms"]) == {"decode", "encode", "search", "total"}
            form, headers = multipart("image", query.name, raw)
            status, body, _ = call(url, f"/api/search?{param}", form, headers)
            assert status == 200 and [(h["rank"], h["distance"], h["id"]) for h in json.loads(body)["results"]] == want


def test_a_result_searches_with_its_own_image_and_has_a_thumbnail(served, url) -> None:
    status, body, _ = call(url, "/api/search?k=3", (served["images"] / "green" / "green_0.jpg").read_bytes())
    first = json.loads(body)["results"][0]
    status, body, _ = call(url, f"/api/search?k=3&item={first['position']}", method="POST")
    assert status == 200 and json.loads(body)["results"][0]["distance"] == 0
    status, body, ctype = call(url, first["thumb"])
    assert status == 200 and ctype == "image/jpeg"
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 160


@pytest.mark.parametrize("path,expect", [
    ("/api/thumb/-1", 404), ("/api/thumb/24", 404), ("/api/thumb/1000000000", 404), ("/api/thumb/1.5", 400),
    ("/api/thumb/..%2F..%2F..%2Fetc%2Fpasswd", 404), ("/api/thumb/%2Fetc%2Fpasswd", 404), ("/../../etc/passwd", 404),
    ("/api/nothing", 404),
])
def test_thumbnails_reach_only_served_items(url, path: str, expect: int) -> None:
    status, body, ctype = call(url, path)
    assert status == expect and b"root:" not in body
    error_of(status, body, ctype)


def test_bad_uploads_get_a_4xx_and_the_server_keeps_serving(served, url, monkeypatch) -> None:
    good = (served["images"] / "red" / "red_0.jpg").read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (30, 30), (9, 9, 9)).save(png, format="PNG")
    cases = [
        (b"definitely not an image", "", "not an image Pillow can decode"),
        (b"", "", "empty"),
        (png.getvalue()[:60], "", "cannot read image upload"),
        (good, "?k=0", "k must be positive"),
        (good, "?radius=-2", "radius must be >= 0"),
        (good, "?k=ten", "k:"),
        (b"", "?item=99999", "no item 99999"),
        (good, "?k=3&radius=2", "k cannot be given with a radius"),
        (good, f"?k={2**63}", "k must be at most 2,147,483,647"),
        (good, "?item=1", "not both"),
    ]
    for body, query, words in cases:
        assert words in error_of(*call(url, "/api/search" + query, body))
    status, body, _ = call(url, f"/api/search?radius={2**63}", good)
    assert status == 200 and json.loads(body)["count"] == 24  # beyond the bit length: everything
    status, body, ctype = call(url, "/api/search")
    assert status == 405 and ctype.startswith("application/json") and "use POST" in json.loads(body)["error"]
    assert call(url, "/api/nothing-here")[0] == 404
    form, headers = multipart("picture", "x.png", good)
    assert 'field named "image"' in error_of(*call(url, "/api/search", form, headers))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the server shares this process: a 900-pixel "bomb"
    assert "decompression bomb" in error_of(*call(url, "/api/search", png.getvalue()))
    monkeypatch.undo()
    status, body, _ = call(url, "/api/search?k=2", good)
    assert status == 200 and json.loads(body)["count"] == 2


def test_bodies_over_the_limit_are_refused_declared_or_streamed(service) -> None:
    with running(create_app(service, max_body=4096)) as base:
        assert "4,096-byte limit" in error_of(*call(base, "/api/search", b"x" * 5000))
        chunks = iter([b"y" * 3000, b"y" * 3000])  # no Content-Length: sent chunked
        request = urllib.request.Request(base + "/api/search", data=chunks, method="POST",
                                         headers={"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 413 and "limit" in json.loads(info.value.read())["error"]
        assert call(base, "/api/health")[0] == 200


def test_a_token_guards_the_api_but_not_the_page_or_health(service, served) -> None:
    good = (served["images"] / "red" / "red_0.jpg").read_bytes()
    with running(create_app(service, token="s3cret-token")) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            assert "bearer token" in error_of(*call(base, "/api/search", good, headers))
            assert call(base, "/api/thumb/0", headers=headers)[0] == 401
        assert call(base, "/api/search", good, {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert call(base, "/api/info", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert call(base, "/api/health")[0] == 200 and call(base, "/")[0] == 200


def test_concurrent_clients_get_the_same_answers(served, url) -> None:
    queries = sorted(served["images"].rglob("*.*"))[:4]

    def ask(path: Path) -> list:
        status, body, _ = call(url, "/api/search?k=5", path.read_bytes())
        assert status == 200, body
        return [(h["distance"], h["id"]) for h in json.loads(body)["results"]]

    alone = [ask(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, queries * 12))
    assert together == alone * 12


def test_serve_refuses_to_expose_codes_without_a_token(served, capsys) -> None:
    args = ["serve", "--codes", str(served["codes"]), "--model", str(served["model"]), "--host", "0.0.0.0"]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and "--token" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["serve", "--model", str(served["model"])], capsys)
    assert code == 1 and "--codes" in err


@pytest.mark.parametrize("variable, value", [("BRCD_SIMD", "mmx"), ("BRCD_KERNEL_BACKEND", "gpu"),
                                             ("BRCD_AVX2_STEP", "tall")])
def test_serve_refuses_a_bad_backend_variable_before_it_binds(served, capsys, monkeypatch, variable: str,
                                                               value: str) -> None:
    """Every request would meet the variable in the dispatch; the server says so once, at start, and never listens."""
    if variable != "BRCD_KERNEL_BACKEND" and not os.environ.get("CI"):
        pytest.importorskip("brcd_cli._hamming_cpu", reason="the native scan reads the SIMD variables")
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("brcd_cli.serve.run_server", lambda *a, **k: pytest.fail("the server started listening"))
    args = ["serve", "--codes", str(served["codes"]), "--model", str(served["model"]), "--port", "0"]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"'{value}'" in err and variable in err and "serving at" not in out


def test_a_server_fault_is_a_json_500_and_the_server_keeps_serving(served, service, url, monkeypatch) -> None:
    good = (served["images"] / "red" / "red_0.jpg").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("/secret/path/of/the/server")

    monkeypatch.setattr(service, "search", broken)
    status, body, ctype = call(url, "/api/search?k=2", good)
    assert status == 500 and ctype.startswith("application/json")
    message = json.loads(body)["error"]
    assert "RuntimeError" in message and "/secret" not in message and "\n" not in message
    monkeypatch.undo()
    status, body, _ = call(url, "/api/search?k=2", good)
    assert status == 200 and json.loads(body)["count"] == 2


def _chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_the_page_searches_in_a_real_browser(served, tmp_path: Path) -> None:
    """Digits (a data set brcd ships, so thumbnails come from it by id): upload, read the grid, click a result."""
    from playwright.sync_api import sync_playwright

    from brcd_cli.data import digits_source

    demo = os.environ.get("BRCD_SCREENSHOT_DEMO")  # a brcd demo folder: its student searching its teacher's codes
    model, codes = (Path(demo) / "student", Path(demo) / "digits-teacher.codes") if demo else (served["model"], tmp_path / "digits.codes")
    if not demo:
        assert run_cli(["encode", "digits", "--model", str(model), "--out", str(codes)])[0] == 0
    query = tmp_path / "query.png"
    digits_source().load(1234).resize((64, 64), Image.NEAREST).save(query)
    svc = SearchService(model, [codes])
    try:
        with running(create_app(svc)) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('info').textContent.includes('1,797')")
            page.set_input_files("#file", str(query))
            page.wait_for_function("document.querySelectorAll('.hit').length === 12")
            hits = page.eval_on_selector_all(".hit", "cards => cards.map(c => [c.querySelector('.id').textContent, "
                                                      "c.querySelector('.distance').textContent])")
            want = svc.search(query.read_bytes(), k=12)["results"]
            assert [h[0] for h in hits] == [h["id"] for h in want]
            assert [h[1] for h in hits] == [f"d = {h['distance']}" for h in want]
            page.wait_for_function("[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")
            if os.environ.get("BRCD_SCREENSHOT"):  # the README's picture: BRCD_SCREENSHOT=docs/serve.png BRCD_SCREENSHOT_DEMO=brcd-demo
                page.screenshot(path=os.environ["BRCD_SCREENSHOT"], full_page=True)
            clicked = want[3]["position"]  # search with the fourth result's own image
            again = [h["id"] for h in svc.search(item=clicked, k=12)["results"]]
            page.click(".hit >> nth=3")
            page.wait_for_function("want => JSON.stringify([...document.querySelectorAll('.hit .id')].map(e => e.textContent))"
                                   " === JSON.stringify(want)", arg=again)
            page.set_input_files("#file", {"name": "bad.png", "mimeType": "image/png", "buffer": b"not a png"})
            page.wait_for_function("document.getElementById('status').className === 'error'")
            assert "cannot read image upload" in page.text_content("#status")
            browser.close()
    finally:
        svc.close()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_server_cleanly(served, signame: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "brcd_cli", "serve", "--codes", str(served["codes"]), "--model",
                             str(served["model"]), "--port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if line.startswith("serving at ") or not line:
                break
        assert lines[-1].startswith("serving at http://127.0.0.1:"), lines
        address = lines[-1].split()[2]
        assert call(address.rstrip("/"), "/api/health")[0] == 200
        proc.send_signal(getattr(signal, signame))
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert rest.strip().splitlines()[-1] == "stopped" and "Traceback" not in rest
    finally:
        proc.kill()


def test_accepted_connections_have_nagle_off() -> None:
    """A kept-alive client's next answer must not wait for a delayed ACK: asyncio sets TCP_NODELAY on our sockets."""
    import asyncio
    import socket

    async def accepted_nodelay() -> int:
        found: list[int] = []

        async def on_client(reader, writer) -> None:
            found.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=open_socket("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if found:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        return found[0]

    assert asyncio.run(accepted_nodelay()) != 0


def test_bench_serve_runs_a_bounded_load_and_stops_its_server(served, capsys) -> None:
    code, out, err = run_cli(["bench", "serve", "--model", str(served["model"]), "--n", "3000", "--requests", "40",
                              "--clients", "4", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["errors"] == 0 and report["warmup_errors"] == 0 and report["server_exit_code"] == 0
    assert report["requests"] == 40 and report["clients"] == 4 and report["queries_per_second"] > 0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert report["latency_ms"]["p50"] >= report["server_ms"]["total"]["p50"] and report["overhead_ms"]["p50"] >= 0
    assert all(report["server_ms"][part]["p50"] >= 0 for part in ("decode", "encode", "search"))


def test_batch_search_answers_each_query_as_a_single_search_does(served, tmp_path: Path, capsys) -> None:
    base = ["--codes", str(served["codes"]), "--model", str(served["model"]), "-k", "4", "--json"]
    queries = [served["images"] / "red" / "red_3.png", served["images"] / "green" / "green_2.jpg"]
    single = []
    for q in queries:
        code, out, err = run_cli(["search", str(q), *base], capsys)
        assert code == 0, err
        single.append(json.loads(out))
    code, out, err = run_cli(["search", *map(str, queries), *base], capsys)
    assert code == 0, err
    assert [json.loads(line) for line in out.strip().splitlines()] == single
    listing = tmp_path / "queries.txt"  # the deep-hashing layout: paths relative to the list, then labels
    listing.write_text("".join(f"{os.path.relpath(q, tmp_path)} 1 0\n" for q in queries))
    code, out, _ = run_cli(["search", str(listing), *base], capsys)
    listed = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and [Path(r.pop("query")).resolve() for r in listed] == [q.resolve() for q in queries]
    assert listed == [{k: v for k, v in r.items() if k != "query"} for r in single]
    code, out, _ = run_cli(["search", str(served["images"] / "red"), *base], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 8


def test_a_bad_query_in_a_batch_is_reported_and_the_others_answered(served, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = served["images"] / "blue" / "blue_1.png"
    sheet = tmp_path / "sheet.html"
    code, out, err = run_cli(["search", str(good), str(bad), "--codes", str(served["codes"]), "--model", str(served["model"]),
                              "-k", "3", "--html", str(sheet)], capsys)
    assert code == 3 and "1 of 2 query images could not be read" in err.strip().splitlines()[-1]
    lines = out.strip().splitlines()
    assert [line.startswith("query ") for line in lines] == [True, False, False, False, True] and "cannot read query image" in lines[-1]
    page = sheet.read_text()
    assert page.count("data:image/jpeg;base64,") == 1 + 3 and "broken.png" in page and "blue_1.png" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained
