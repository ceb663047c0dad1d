"""Torch's threads beside the decode workers: the rule as a pure function, the stream that applies it, and encode's flag."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

import brcd_cli.threads as threads_module
from brcd_cli.data import synthetic_source
from brcd_cli.data.loader import BatchStream, LoadOptions
from brcd_cli.errors import OptionError
from brcd_cli.threads import forward_threads, set_threads
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from conftest import TINY_ARCH, run_cli

QUIET = lambda _: None  # noqa: E731


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores,workers,decode_ms,forward_ms,expect", [
    (2, 2, 25.0, 2.0, 1),    # 12 MP JPEGs, 64 px student: the measured case, one forward thread
    (2, 1, 25.0, 2.0, 1),
    (2, 0, 25.0, 2.0, 1),    # serial: the calling thread decodes between forwards, extra threads only spin
    (8, 2, 25.0, 2.0, 6),    # the cores the decoders leave
    (8, 0, 25.0, 2.0, 7),
    (4, 16, 25.0, 2.0, 1),   # more decoders than cores: still one
    (2, 2, 0.05, 2.0, 2),    # arrays in memory: the forward dominates, every core
    (8, 8, 25.0, 60.0, 8),   # a large model: the forward dominates
    (8, 8, 10.0, 10.0, 8),   # a tie goes to the forward
    (1, 1, 25.0, 2.0, 1),
])
def test_forward_threads_rule(cores: int, workers: int, decode_ms: float, forward_ms: float, expect: int) -> None:
    assert forward_threads(cores, workers, decode_ms, forward_ms) == expect


@pytest.mark.parametrize("args", [(0, 1, 1.0, 1.0), (2, -1, 1.0, 1.0), (2, 1, -1.0, 1.0), (2, 1, 1.0, -0.5)])
def test_forward_threads_refuses_nonsense(args: tuple) -> None:
    with pytest.raises(ValueError, match="forward_threads needs"):
        forward_threads(*args)


def test_negative_threads_are_one_clear_error() -> None:
    with pytest.raises(OptionError, match="threads must be at least 1"):
        set_threads(-2)


class _BusyDecoder:
    """Items whose decoding burns ``cpu_ms`` of this thread's CPU (what thread_time sees), then a blank image."""

    name = "busy"

    def __init__(self, cpu_ms: float) -> None:
        self.cpu_ms = cpu_ms

    def prepare(self, source: Any, index: int, size: int) -> torch.Tensor:
        end = time.thread_time() + self.cpu_ms / 1000
        while time.thread_time() < end:
            pass
        return torch.zeros((3, size, size), dtype=torch.uint8)

    def finish(self, source: Any, indices: Sequence[int], prepared: list[Any], size: int) -> list[Any]:
        return prepared


def _consume(decode_ms: float, hold_s, workers: int, batches: int = 4, batch_size: int = 4) -> BatchStream:
    """``hold_s``: the consumer's forward per batch, one number or one per batch."""
    holds = hold_s if isinstance(hold_s, (list, tuple)) else [hold_s] * batches
    source = synthetic_source(n=batches * batch_size)
    stream = BatchStream(source, range(len(source)), 8, batch_size, LoadOptions(workers=workers, tune_threads=True),
                         decoder=_BusyDecoder(decode_ms))
    with stream:
        for number, _ in enumerate(stream):
            time.sleep(holds[number])
    return stream


@pytest.mark.parametrize("workers", [0, 2])
def test_a_decode_bound_stream_leaves_the_forward_the_cores_the_decoders_leave(monkeypatch, workers: int) -> None:
    monkeypatch.setattr(threads_module, "process_cores", lambda: 4)
    torch.set_num_threads(4)
    stream = _consume(decode_ms=20.0, hold_s=0.004, workers=workers)  # 1 ms of forward per item, 20 ms of decoding
    assert stream.tuned["threads"] == (4 - max(1, workers)) == torch.get_num_threads()
    assert stream.tuned["decode_ms"] >= 19.0 and stream.tuned["forward_ms"] < stream.tuned["decode_ms"]


def test_a_slow_warm_up_batch_does_not_read_as_a_forward_bound_stream(monkeypatch) -> None:
    """A model still optimising itself holds the second batch many times longer than later ones (TorchScript's
    profiling runs); the fastest hold of batches 2-4 is the forward's cost, so decoding still dominates."""
    monkeypatch.setattr(threads_module, "process_cores", lambda: 4)
    torch.set_num_threads(4)
    # per item: 120 ms held in batches 1-2 (the warm-up), 1 ms after, 20 ms of decoding
    stream = _consume(decode_ms=20.0, hold_s=[0.48, 0.48, 0.004, 0.004, 0.004], workers=2, batches=5)
    assert stream.tuned["threads"] == 2 == torch.get_num_threads()
    assert stream.tuned["forward_ms"] < stream.tuned["decode_ms"] < 120.0


def test_a_forward_bound_stream_gives_the_forward_every_core(monkeypatch) -> None:
    monkeypatch.setattr(threads_module, "process_cores", lambda: 4)
    torch.set_num_threads(1)
    stream = _consume(decode_ms=0.5, hold_s=0.08, workers=2)  # 20 ms of forward per item
    assert stream.tuned["threads"] == 4 == torch.get_num_threads()


def test_without_tuning_the_stream_leaves_torch_alone() -> None:
    torch.set_num_threads(3)
    source = synthetic_source(n=16)
    with BatchStream(source, range(16), 8, 4, LoadOptions(workers=2), decoder=_BusyDecoder(5.0)) as stream:
        list(stream)
    assert stream.tuned is None and torch.get_num_threads() == 3


def test_a_stream_of_one_batch_decides_nothing() -> None:
    torch.set_num_threads(3)
    stream = _consume(decode_ms=5.0, hold_s=0.0, workers=1, batches=1)
    assert stream.tuned is None and torch.get_num_threads() == 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("threads")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(16):  # four batches of 4: the stream decides after the fourth
        Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)).save(images / f"{i:02d}.jpg")
    model = root / "model"
    train_teacher(synthetic_source(n=32), model, TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                                                                fit=FitOptions(epochs=1, batch_size=16)), log=QUIET)
    return {"images": images, "model": model}


@pytest.mark.parametrize("flag,tuned", [([], True), (["--threads", "3"], False)])
def test_encode_tunes_the_threads_unless_they_are_given(tiny, tmp_path: Path, capsys, monkeypatch, flag, tuned) -> None:
    calls: list[tuple] = []

    def spy(workers: int, decode_ms: float, forward_ms: float) -> int:
        calls.append((workers, decode_ms, forward_ms))
        return torch.get_num_threads()

    monkeypatch.setattr(threads_module, "tune_forward_threads", spy)
    code, _, err = run_cli(["encode", str(tiny["images"]), "--model", str(tiny["model"]), "--out", str(tmp_path / "c.bin"),
                            "--batch-size", "4", "--workers", "2", *flag], capsys)
    assert code == 0, err
    assert len(calls) == (1 if tuned else 0)
    if tuned:
        assert calls[0][0] == 2 and calls[0][1] > 0
    else:
        assert torch.get_num_threads() == 3
