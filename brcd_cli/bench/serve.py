"""`brcd bench serve`: a bounded load test of ``brcd serve`` on 127.0.0.1, measured from the clients' side.

It starts the server as its own process (``python -m brcd_cli serve --port 0``)
on a codes file (given, or ``n`` seeded random codes written in the model's code
space, so the scan does the work a real collection of that size costs), sends
``requests`` searches from ``clients`` concurrent clients, each on its own
kept-alive connection, with query images drawn from the digits brcd ships,
then stops the server with SIGTERM. Nothing leaves the machine and the run is
bounded in count.

Reported: queries/s; end-to-end latency percentiles; the server's own decode
/ encode / search times from each answer; the overhead (HTTP, upload, JSON:
end-to-end minus the server's own total, per request); errors; and the
server's resident memory after the warm-up and at the end (flat memory means
nothing grows per request).
"""
from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import BrcdError
from ..options import at_least

WARMUP = 20  # requests before timing starts (first forwards, page faults of the codes)


@dataclass(frozen=True)
class ServeBenchConfig:
    """The model, the collection, and the load."""

    model: Path
    codes: Optional[Path] = None  # None: n random codes in the model's code space
    n: int = 1_000_000
    clients: int = 1
    requests: int = 500
    k: int = 10
    queries: int = 64  # distinct query images, cycled
    seed: int = 0
    threads: Optional[int] = None  # the server's CPU threads

    def validate(self) -> None:
        for name in ("n", "clients", "requests", "k", "queries"):
            at_least(name, getattr(self, name), 1)


def _query_images(count: int, seed: int) -> list[bytes]:
    """PNG bytes of seeded digits, enlarged as a camera would give them (so decoding does real work)."""
    from PIL import Image

    from ..data import digits_source

    source = digits_source()
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(source), size=count, replace=False):
        buffer = io.BytesIO()
        source.load(int(i)).resize((128, 128), Image.BILINEAR).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _synthetic_codes(path: Path, model: Path, n: int, seed: int) -> None:
    from ..codes import write_codes
    from ..models import code_space_of
    from ..models.checkpoint import read_config

    config, fingerprint = read_config(model)
    codes = np.random.default_rng(seed).integers(0, 256, size=(n, config.bits // 8), dtype=np.uint8)
    write_codes(path, codes, [f"random-{i}" for i in range(n)], config.bits, fingerprint,
                code_space_of(config, fingerprint), metadata={"data": "random"})


def _rss_mb(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class _Server:
    """``brcd serve`` in a child process, on a free loopback port."""

    def __init__(self, model: Path, codes: Path, threads: Optional[int]) -> None:
        args = [sys.executable, "-m", "brcd_cli", "serve", "--codes", str(codes), "--model", str(model), "--port", "0"]
        if threads is not None:
            args += ["--threads", str(threads)]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if line.startswith("serving at http://"):
                self.host, port = line.split()[2].removeprefix("http://").rstrip("/").rsplit(":", 1)
                self.port = int(port)
                return
        self.stop()
        raise BrcdError("the server did not start: " + (self.lines[-1] if self.lines else "no output"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


class _Connection(http.client.HTTPConnection):
    """A kept-alive connection that sends at once, as browsers and curl do.

    http.client writes a request's headers and body in two sends; without
    TCP_NODELAY, Nagle's algorithm holds the body until the server acknowledges
    the headers, which it delays by up to 40 ms: a client artefact, not the server's.
    """

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(host: str, port: int, images: list[bytes], jobs: list[int], k: int, out: list[tuple[float, Optional[dict]]]) -> None:
    connection = _Connection(host, port, timeout=60)
    try:
        for j in jobs:
            start = time.perf_counter()
            try:
                connection.request("POST", f"/api/search?k={k}", body=images[j % len(images)],
                                   headers={"Content-Type": "application/octet-stream"})
                response = connection.getresponse()
                body = response.read()
                answer = json.loads(body) if response.status == 200 else None
            except (OSError, http.client.HTTPException, ValueError):
                connection.close()
                connection = _Connection(host, port, timeout=60)
                answer = None
            out.append((time.perf_counter() - start, answer))
    finally:
        connection.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000.0
    return {name: round(float(np.percentile(a, q)), 3) for name, q in (("p50", 50), ("p90", 90), ("p99", 99))} | {
        "max": round(float(a.max()), 3)}


def run_serve_bench(config: ServeBenchConfig, log=lambda _: None) -> dict[str, Any]:
    """Start the server, load it, stop it; the report (see the module docstring)."""
    config.validate()
    images = _query_images(config.queries, config.seed)
    with tempfile.TemporaryDirectory(prefix="brcd-bench-serve-") as tmp:
        codes = config.codes
        if codes is None:
            codes = Path(tmp) / "random.codes"
            log(f"writing {config.n:,} random codes in the model's code space")
            _synthetic_codes(codes, config.model, config.n, config.seed)
        server = _Server(config.model, codes, config.threads)
        try:
            warm: list[tuple[float, Optional[dict]]] = []
            _client(server.host, server.port, images, list(range(WARMUP)), config.k, warm)
            rss_start = _rss_mb(server.proc.pid)
            results: list[tuple[float, Optional[dict]]] = []
            shares = [list(range(c, config.requests, config.clients)) for c in range(config.clients)]
            workers = [threading.Thread(target=_client, args=(server.host, server.port, images, share, config.k, results))
                       for share in shares]
            started = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - started
            rss_end = _rss_mb(server.proc.pid)
        finally:
            exit_code = server.stop()
    ok = [(t, a) for t, a in results if a is not None]
    server_ms = {part: _percentiles([a["timing_ms"][part] / 1000.0 for _, a in ok]) for part in ("decode", "encode", "search", "total")}
    overhead = _percentiles([t - a["timing_ms"]["total"] / 1000.0 for t, a in ok])
    return {
        "model": str(config.model), "codes": str(config.codes) if config.codes else f"{config.n} random codes",
        "clients": config.clients, "requests": config.requests, "k": config.k, "errors": config.requests - len(ok),
        "warmup_errors": sum(1 for _, a in warm if a is None), "seconds": round(wall, 3),
        "queries_per_second": round(len(ok) / wall, 2) if wall > 0 else None,
        "latency_ms": _percentiles([t for t, _ in ok]), "server_ms": server_ms, "overhead_ms": overhead,
        "server_rss_mb": {"after_warmup": rss_start, "end": rss_end}, "server_exit_code": exit_code,
        "cpu": _cpu_name(), "cores": os.cpu_count(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def format_report(report: dict[str, Any]) -> list[str]:
    """Human-readable lines (the --json output carries the same numbers)."""
    lat, srv, over = report["latency_ms"], report["server_ms"], report["overhead_ms"]
    rss = report["server_rss_mb"]
    lines = [
        f"{report['requests']} searches (k={report['k']}) from {report['clients']} client(s) against {report['codes']}, "
        f"model {report['model']}; {report['cpu']}, {report['cores']} cores",
        f"{report['queries_per_second']:,.1f} queries/s, {report['errors']} errors",
    ]
    if lat:
        lines += [
            f"end to end  p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}",
            "server      " + "  ".join(f"{part} p50 {srv[part]['p50']:.2f} / p99 {srv[part]['p99']:.2f} ms"
                                       for part in ("decode", "encode", "search")),
            f"overhead    p50 {over['p50']:.2f} ms  p99 {over['p99']:.2f} ms  (HTTP, upload, JSON)",
        ]
    if rss["after_warmup"] is not None and rss["end"] is not None:
        lines.append(f"server memory {rss['after_warmup']:.0f} MB after warm-up, {rss['end']:.0f} MB at the end")
    return lines


__all__ = ["ServeBenchConfig", "format_report", "run_serve_bench"]
