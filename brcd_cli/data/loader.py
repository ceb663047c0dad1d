"""Images to batches of model input, decoded by a pool of workers ahead of the model.

Why it exists: for a small student the network is the cheap part. A
12-megapixel camera JPEG costs tens of milliseconds to decode on one core and
a 64 px forward well under one per image, so an encode that decodes one image
after another, and only then runs the model, leaves the other cores (and any
GPU) idle most of the time. Here decoding is

* sized to the job (a *decoding*, chosen by name from :data:`DECODINGS`):
  ``draft`` decodes a JPEG at the smallest DCT scale that still covers the
  model's input (:func:`brcd_cli.data.sources.decode_image`), ``exact`` decodes
  every pixel, ``cuda`` decodes JPEGs on the GPU with nvJPEG; all three end in
  the same resize and centre crop (:func:`crop_box`);
* parallel and ahead of the consumer (:class:`BatchStream`): worker threads
  decode items (Pillow releases the GIL while it decodes and resizes) while
  the model runs on the batch before; a fixed number of batches is in flight,
  so memory stays flat however long the collection is, and batches come out
  in source order, so the result is the one a serial run gives.

Training, evaluation and ``brcd encode`` read images through this module
(``preload`` and ``iter_batches`` in :mod:`brcd_cli.data.augment` are thin
shells over it), so a model is trained on the pixels it will later encode.
"""
from __future__ import annotations

import io
import os
import stat
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, OptionError
from ..options import at_least, one_of
from .sources import DRAFT_BOX, EXIF_ORIENTATION, ImageSource

DECODE_DEVICES = ("cpu", "cuda")


# -- the shared geometry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CropBox:
    """Resize to (width, height), then keep ``size`` x ``size`` from (left, top): the test-time transform."""

    width: int
    height: int
    left: int
    top: int
    upscale: bool


def crop_box(width: float, height: float, size: int) -> CropBox:
    """The shorter side to ``size``, the centre ``size`` x ``size`` kept; every decoder resizes by this one rule."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    return CropBox(nw, nh, (nw - size) // 2, (nh - size) // 2, scale > 1)


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Test-time transform: resize the shorter side to ``size``, centre-crop, uint8 CHW.

    A drafted image is resized from the region the whole picture covers in it
    (``info[DRAFT_BOX]``), so the box is the one a full decode would get.
    """
    region = image.info.get(DRAFT_BOX)
    extent = (region[2] - region[0], region[3] - region[1]) if region else image.size
    box = crop_box(*extent, size)
    resample = Image.BICUBIC if box.upscale else Image.BILINEAR
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize((box.width, box.height), resample=resample, box=region,
                         reducing_gap=None if box.upscale else 3.0)
    image = image.crop((box.left, box.top, box.left + size, box.top + size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`to_tensor` for a decoded uint8 (3, H, W) tensor on any device: the same box, torch's antialiased filter."""
    box = crop_box(image.shape[-1], image.shape[-2], size)
    x = F.interpolate(image.unsqueeze(0).float(), size=(box.height, box.width),
                      mode="bicubic" if box.upscale else "bilinear", antialias=True, align_corners=False)
    x = x[0, :, box.top : box.top + size, box.left : box.left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8)


#: EXIF orientation -> the op on a (C, H, W) tensor that shows the picture upright (Pillow's exif_transpose).
ORIENTATIONS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    1: lambda x: x,
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1).flip(-2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1).flip(-2),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


# -- decoders ------------------------------------------------------------------------------------------

class Decoder(Protocol):
    """One way of turning items into the model's input: uint8 (3, size, size) tensors on the CPU.

    ``prepare`` runs in a worker thread, once per item: it returns the finished
    tensor, or whatever ``finish`` needs to finish it (raising DataError for an
    unreadable item). ``finish`` runs once per batch, batches in order, and
    returns a tensor or the DataError for each item.
    """

    name: str

    def prepare(self, source: ImageSource, index: int, size: int) -> Any: ...

    def finish(self, source: ImageSource, indices: Sequence[int], prepared: list[Any],
               size: int) -> list[Union[torch.Tensor, DataError]]: ...


@dataclass(frozen=True)
class PillowDecoder:
    """Pillow on the CPU: a JPEG at the smallest DCT scale that covers the input (``draft``; at 1/8 scale brcd's
    own decoder gives Pillow's pixels sooner, :mod:`.jpeg_eighth`), or every pixel."""

    name: str
    draft: bool

    def prepare(self, source: ImageSource, index: int, size: int) -> torch.Tensor:
        return to_tensor(source.load(index, draft=size if self.draft else None), size)

    def finish(self, source: ImageSource, indices: Sequence[int], prepared: list[Any],
               size: int) -> list[Union[torch.Tensor, DataError]]:
        return prepared


@dataclass(frozen=True)
class _Encoded:
    """A JPEG file's bytes, read and checked in a worker, waiting for the device decoder."""

    data: bytes
    orientation: int


class DeviceJpegDecoder:
    """JPEG files decoded on a device in one batched call (nvJPEG on CUDA), then resized there.

    Workers read each file and check its header on the CPU (the
    decompression-bomb limit, the EXIF orientation); a batch's JPEGs go to the
    device from one pinned host buffer, are decoded together, turned upright
    and resized by :func:`resize_crop`, and come back as small uint8 tensors.
    Anything else (another format, a CMYK JPEG, data the device decoder
    refuses) takes Pillow's exact path, which also words every refusal as the
    CPU decoders do. ``decode`` is the batched decoder; tests pass
    torchvision's CPU decoder to exercise the rest without a GPU.
    """

    name = "cuda"

    def __init__(self, device: torch.device, decode: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                 pin_memory: bool) -> None:
        self.device = device
        self.decode = decode
        self.pin_memory = pin_memory
        self._fallback = PillowDecoder("exact", draft=False)
        self._buffer: Optional[torch.Tensor] = None

    @classmethod
    def for_cuda(cls) -> "DeviceJpegDecoder":
        """nvJPEG through torchvision; refused in one line where there is no CUDA device or no torchvision."""
        if not torch.cuda.is_available():
            raise OptionError("decode_device", "cuda needs a CUDA GPU, and torch sees none here; decode on the cpu instead")
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError as exc:
            raise OptionError("decode_device", f"cuda needs torchvision for nvJPEG ({exc}); pip install torchvision") from None
        # torchvision 0.29 announces that its decoders move to TorchCodec; nvJPEG through them is what runs here
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)
        device = torch.device("cuda", torch.cuda.current_device())
        return cls(device, lambda blobs: decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device), pin_memory=True)

    def prepare(self, source: ImageSource, index: int, size: int) -> Any:
        if source.files is None:
            return self._fallback.prepare(source, index, size)
        path = source.files[index]
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
                return self._fallback.prepare(source, index, size)
            with open(path, "rb") as fh:
                data = fh.read()
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if im.format != "JPEG" or im.mode not in ("RGB", "L") or width * height > Image.MAX_IMAGE_PIXELS:
                    return self._fallback.prepare(source, index, size)
                orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, UnidentifiedImageError):
            return self._fallback.prepare(source, index, size)  # which says why in the CPU decoders' words
        return _Encoded(data, orientation if orientation in ORIENTATIONS else 1)

    def finish(self, source: ImageSource, indices: Sequence[int], prepared: list[Any],
               size: int) -> list[Union[torch.Tensor, DataError]]:
        out = list(prepared)
        todo = [j for j, p in enumerate(prepared) if isinstance(p, _Encoded)]
        if not todo:
            return out
        blobs = self._host_views([prepared[j].data for j in todo])
        try:
            decoded: list[Optional[torch.Tensor]] = list(self.decode(blobs))
        except RuntimeError:  # one bad file fails the whole batched call: decode them one by one
            decoded = [self._decode_one(blob) for blob in blobs]
        done = [(j, resize_crop(ORIENTATIONS[prepared[j].orientation](image), size))
                for j, image in zip(todo, decoded) if image is not None]
        if done:
            on_host = torch.stack([t for _, t in done]).cpu()  # one copy back, after which the buffer is free again
            for row, (j, _) in enumerate(done):
                out[j] = on_host[row]
        for j, image in zip(todo, decoded):
            if image is None:  # refused by the device decoder: Pillow decides whether it can be read, and says why not
                try:
                    out[j] = self._fallback.prepare(source, int(indices[j]), size)
                except DataError as exc:
                    out[j] = exc
        return out

    def _decode_one(self, blob: torch.Tensor) -> Optional[torch.Tensor]:
        try:
            return self.decode([blob])[0]
        except RuntimeError:
            return None

    def _host_views(self, blobs: list[bytes]) -> list[torch.Tensor]:
        """The batch's files back to back in one reusable (pinned) host buffer, as 1-D uint8 views.

        One buffer grown as needed instead of one allocation per file: pinning
        memory is slow, and pinned pages let the copy to the device run at full
        speed. It is reused only after the batch before came back to the host.
        """
        total = sum(len(b) for b in blobs)
        if self._buffer is None or self._buffer.numel() < total:
            self._buffer = torch.empty(total + total // 4, dtype=torch.uint8, pin_memory=self.pin_memory)
        host = self._buffer.numpy()
        views, pos = [], 0
        for blob in blobs:
            host[pos : pos + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
            views.append(self._buffer[pos : pos + len(blob)])
            pos += len(blob)
        return views


#: Decodings by name: what a codes file's decoding is called, and how to make its decoder.
DECODINGS: dict[str, Callable[[], Decoder]] = {
    "draft": lambda: PillowDecoder("draft", draft=True),
    "exact": lambda: PillowDecoder("exact", draft=False),
    "cuda": DeviceJpegDecoder.for_cuda,
}


def default_workers() -> int:
    """One decode worker per core this process may use: decoding is the bulk of the work."""
    from ..kernels import default_threads  # the cores of this process's affinity mask

    return default_threads()


@dataclass(frozen=True)
class LoadOptions:
    """How images are decoded and how many workers decode them.

    ``workers``: decode threads (None: one per core; 0: decode in the calling
    thread, one item after another). ``exact``: decode every pixel of a JPEG
    instead of the smallest DCT scale that covers the input. ``device``:
    where JPEGs are decoded (``cuda``: nvJPEG, always a full decode).
    ``prefetch``: batches decoded ahead of the one being consumed.
    ``tune_threads``: once the stream has timed a few batches' decoding and
    their consumer (``TUNING_BATCHES``), set torch's threads by :func:`brcd_cli.threads.forward_threads`
    (encode's default when ``--threads`` is not given; training keeps its own).
    """

    workers: Optional[int] = None
    exact: bool = False
    device: str = "cpu"
    prefetch: int = 2
    tune_threads: bool = False

    def __post_init__(self) -> None:
        at_least("workers", self.workers, 0, optional=True)
        one_of("decode_device", self.device, DECODE_DEVICES)
        at_least("prefetch", self.prefetch, 1)

    @property
    def decoding(self) -> str:
        """The name in :data:`DECODINGS` these options select."""
        if self.device == "cuda":
            return "cuda"
        return "exact" if self.exact else "draft"

    @property
    def worker_count(self) -> int:
        return default_workers() if self.workers is None else self.workers

    def decoder(self) -> Decoder:
        """A decoder for these options; one clear error where it cannot run here (cuda without a GPU, or a
        ``BRCD_JPEG_DECODER`` it does not know), before any image is read."""
        if self.decoding == "draft":
            from .jpeg_eighth import active

            active()
        return DECODINGS[self.decoding]()


# -- the stream ----------------------------------------------------------------------------------------

@dataclass
class Batch:
    """One batch of a stream: the items it asked for, the images of those that could be read, and why the others could not."""

    indices: np.ndarray
    images: torch.Tensor  # uint8 (len(ok), 3, size, size)
    ok: list[int]
    skipped: list[tuple[int, str]]


#: The batches whose hold times the stream compares with decoding before it sets torch's threads.
TUNING_BATCHES = (1, 2, 3)


class BatchStream:
    """Batches of ``batch_size`` items of ``indices``, in order, decoded by ``options.worker_count`` threads.

    At most ``options.prefetch`` batches are being decoded while the consumer
    holds the one before, so memory stays flat. With ``tolerant`` an
    unreadable item is set aside in ``Batch.skipped`` with its reason;
    otherwise the first one (in order) raises its DataError. Use it as a
    context manager (or exhaust it): leaving early cancels the work not yet
    started and waits for the images being decoded.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int], size: int, batch_size: int,
                 options: Optional[LoadOptions] = None, tolerant: bool = True,
                 decoder: Optional[Decoder] = None) -> None:
        at_least("batch_size", batch_size, 1)
        self.source, self.size, self.batch_size, self.tolerant = source, size, batch_size, tolerant
        self.indices = np.asarray(indices, dtype=np.int64)
        self.options = options or LoadOptions()
        self.decoder = decoder or self.options.decoder()
        self._pools: list[ThreadPoolExecutor] = []
        #: what the stream saw and chose when ``options.tune_threads``: decode CPU ms and consumer ms per item, threads
        self.tuned: Optional[dict[str, float]] = None
        self._decoding = [0.0, 0]  # CPU seconds spent decoding, items decoded: summed over the threads, under the lock
        self._lock = threading.Lock()

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()
        if not self.options.tune_threads:
            yield from batches
            return
        yield from self._tuning(batches)

    def _tuning(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Pass batches on, timing the consumer's hold of batches 2-4 against the CPU their items took to decode,
        then set torch's threads once: re-deciding as rates shift would flip the count back and forth, since fewer
        forward threads change which side dominates. The fastest of those holds is the forward's steady cost: the
        first batch pays the model's warm-up, and a TorchScript program may still be optimising itself in the
        second (a hold many times the steady one, which once read as "the forward dominates")."""
        from ..threads import tune_forward_threads

        fastest = float("inf")
        try:
            for number, batch in enumerate(batches):
                held = time.perf_counter()
                yield batch
                if number in TUNING_BATCHES and len(batch.indices):
                    fastest = min(fastest, 1000 * (time.perf_counter() - held) / len(batch.indices))
                if number == TUNING_BATCHES[-1] and fastest < float("inf"):
                    forward_ms = fastest
                    with self._lock:
                        seconds, items = self._decoding
                    decode_ms = 1000 * seconds / max(1, items)
                    threads = tune_forward_threads(self.options.worker_count, decode_ms, forward_ms)
                    self.tuned = {"decode_ms": round(decode_ms, 3), "forward_ms": round(forward_ms, 3), "threads": threads}
        finally:
            batches.close()  # a consumer that leaves early stops the workers now, not when the generator is collected

    def _batches(self) -> Iterator[Batch]:
        chunks = (self.indices[s : s + self.batch_size] for s in range(0, len(self.indices), self.batch_size))
        workers = self.options.worker_count
        if workers == 0:
            for chunk in chunks:
                yield self._finish(chunk, [self._prepare(int(i)) for i in chunk])
            return
        items = ThreadPoolExecutor(workers, thread_name_prefix="brcd-decode")
        batches = ThreadPoolExecutor(1, thread_name_prefix="brcd-batch")
        self._pools = [batches, items]
        pending: deque[Future[Batch]] = deque()
        try:
            for chunk in chunks:
                futures = [items.submit(self._prepare, int(i)) for i in chunk]
                pending.append(batches.submit(self._finish_when_ready, chunk, futures))
                if len(pending) > self.options.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            self.close()

    def close(self) -> None:
        """Cancel what has not started and wait for what has (a worker never outlives the stream)."""
        pools, self._pools = self._pools, []
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for pool in pools:
            pool.shutdown(wait=True)

    def _prepare(self, index: int) -> Any:
        if not self.options.tune_threads:
            return self._decode(index)
        started = time.thread_time()  # this thread's CPU only: what decoding costs, whatever else runs on the machine
        try:
            return self._decode(index)
        finally:
            spent = time.thread_time() - started
            with self._lock:
                self._decoding[0] += spent
                self._decoding[1] += 1

    def _decode(self, index: int) -> Any:
        try:
            return self.decoder.prepare(self.source, index, self.size)
        except DataError as exc:
            return exc

    def _finish_when_ready(self, chunk: np.ndarray, futures: list[Future]) -> Batch:
        return self._finish(chunk, [f.result() for f in futures])

    def _finish(self, chunk: np.ndarray, prepared: list[Any]) -> Batch:
        results = self.decoder.finish(self.source, chunk, prepared, self.size)
        images, ok, skipped = [], [], []
        for index, result in zip(map(int, chunk), results):
            if isinstance(result, DataError):
                if not self.tolerant:
                    raise result
                skipped.append((index, str(result)))
            else:
                images.append(result)
                ok.append(index)
        stacked = torch.stack(images) if images else torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8)
        return Batch(indices=chunk, images=stacked, ok=ok, skipped=skipped)


__all__ = ["Batch", "BatchStream", "DECODINGS", "DECODE_DEVICES", "Decoder", "DeviceJpegDecoder", "LoadOptions",
           "PillowDecoder", "crop_box", "default_workers", "resize_crop", "to_tensor"]
