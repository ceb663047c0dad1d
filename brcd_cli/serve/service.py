"""What a running server holds and does: the model, the collection and item images, loaded once.

Every request decodes its image, encodes it with the model and searches the
collection through the search contract; the three steps are timed so that a
client (and ``brcd bench serve``) can see where the time goes. The methods are
blocking and thread-safe: the web app runs them off its event loop.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..data import decode_image, to_tensor
from ..encoding import packed_codes_of_images
from ..errors import BrcdError
from ..kernels._registry import BackendError
from ..models import code_space_of, load_encoder
from ..search import check_compatible, check_request, open_collection, query
from .images import ItemImages


class SearchService:
    """The model, the served collection and its item images."""

    def __init__(self, model_dir: Path, codes: Union[str, Sequence[Path]], *, collection: Optional[str] = None,
                 use_index: bool = True, roots: Sequence[Path] = (), log: Callable[[str], None] = lambda _: None,
                 exact_decode: bool = False) -> None:
        self.model, fingerprint = load_encoder(model_dir)
        #: an uploaded JPEG (and a served item's file) is decoded at the smallest DCT scale that covers the input,
        #: as brcd encode and brcd search do; None with --exact-decode
        self.draft = None if exact_decode else self.model.config.image_size
        self.model.eval()
        self.model_dir = Path(model_dir)
        self.bits = self.model.config.bits
        self.code_space = code_space_of(self.model.config, fingerprint)
        self.collection = open_collection(codes, collection=collection, use_index=use_index, log=log)
        try:
            check_compatible(self.collection, self.bits, self.code_space)
            self._rehearse()
        except (BrcdError, BackendError):
            self.collection.close()
            raise
        self.images = ItemImages.beside(self.collection, codes, roots)

    def _rehearse(self) -> None:
        """One k-NN and one radius search of an all-zero code before the server binds.

        Why: every request searches through the kernel dispatch, which reads its
        BRCD_* variables on each call; an unknown value there (or a forced
        backend that cannot run) must stop ``brcd serve`` with one line now,
        not answer every request with a 500.
        """
        probe = np.zeros((1, (self.bits + 7) // 8), dtype=np.uint8)
        query(self.collection, probe, k=1)
        query(self.collection, probe, radius=0)

    def info(self) -> dict[str, Any]:
        from .. import kernels

        config = self.model.config
        return {
            "model": str(self.model_dir), "arch": config.arch, "role": config.role, "image_size": config.image_size,
            "bits": self.bits, "code_space": self.code_space, "collection": self.collection.name,
            "kind": type(self.collection).__name__, "count": self.collection.count,
            "backend": kernels.active_backend(),
        }

    def search(self, image: Optional[bytes] = None, item: Optional[int] = None, k: int = 10,
               radius: Optional[int] = None) -> dict[str, Any]:
        """Search with uploaded image bytes, or with the image of a served item; hits and timings in milliseconds."""
        check_request(k, radius)
        if (image is None) == (item is None):
            raise BrcdError("send an image, or name a served item to search with")
        start = time.perf_counter()
        decoded = decode_image(image, "upload", self.draft) if image is not None else self.images.image(item, self.draft)
        tensor = to_tensor(decoded, self.model.config.image_size).unsqueeze(0)
        decoded_at = time.perf_counter()
        packed = packed_codes_of_images(self.model, tensor)
        encoded_at = time.perf_counter()
        result = query(self.collection, packed, k=k, radius=radius)
        searched_at = time.perf_counter()
        hits = []
        for position, hit in zip(result.row(0)[1].tolist(), result.hits(0)):
            row = hit.to_dict()
            row.update(position=position, thumb=f"/api/thumb/{position}")
            hits.append(row)
        return {
            "k": None if radius is not None else k, "radius": radius, "count": len(hits), "results": hits,
            "timing_ms": {"decode": _ms(start, decoded_at), "encode": _ms(decoded_at, encoded_at),
                          "search": _ms(encoded_at, searched_at), "total": _ms(start, searched_at)},
        }

    def close(self) -> None:
        self.collection.close()


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 3)
