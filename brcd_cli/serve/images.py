"""The images behind a served collection's items: for thumbnails and for "search with this result".

A request names an item only by its position in the served collection; the
image is then found from that item's own id, never from anything the request
says: an id that is an image file (absolute, or relative to the folders the
server was started in and the codes files lie in), or an item of a data set
that ships with brcd (``digits/...``, ``synthetic/...``, ``photos/...``), looked up by id.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from PIL import Image

from ..data import ImageSource, read_image_file
from ..errors import DataError
from ..search import Collection

THUMB_SIZE = 160
THUMB_CACHE = 4096  # thumbnails kept (a few KB each)
# A photos item depends only on its class and its number within it, so one source this
# deep holds the ids of every ``photos:N`` collection with N up to this (ids cost ~2 MB).
PHOTOS_PER_CLASS = 1000


class ItemNotFound(DataError):
    """No item at that position, or no image can be found for it."""


def _built_in(name: str) -> Optional[ImageSource]:
    from ..data import digits_source, photos_source, synthetic_source

    makers: dict[str, Callable[[], ImageSource]] = {
        "digits": digits_source,
        "synthetic": synthetic_source,
        "photos": lambda: photos_source(n_per_class=PHOTOS_PER_CLASS),
    }
    return makers[name]() if name in makers else None


class ItemImages:
    """Finds, decodes and thumbnails the image of each item of one collection (thread-safe, LRU-cached)."""

    def __init__(self, collection: Collection, roots: Sequence[Path]) -> None:
        self.collection = collection
        self.roots = [Path(r) for r in dict.fromkeys(os.fspath(r) for r in roots)]
        self._lock = threading.Lock()
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._sources: dict[str, tuple[ImageSource, dict[str, int]]] = {}

    @classmethod
    def beside(cls, collection: Collection, source: Union[str, os.PathLike, Sequence[os.PathLike]],
               roots: Sequence[Path] = ()) -> ItemImages:
        """Item images found from the current folder, ``roots`` and the folders of the codes files in ``source``."""
        files = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
        return cls(collection, [Path.cwd(), *roots, *(p.resolve().parent for p in files)])

    def _position(self, index: int) -> int:
        if not 0 <= index < self.collection.count:
            raise ItemNotFound(f"no item {index}: the collection holds items 0..{self.collection.count - 1}")
        return index

    def path_of(self, index: int) -> Optional[Path]:
        """The image file of item ``index``, or None when its id names no file."""
        item_id = self.collection.item(self._position(index)).id
        candidate = Path(item_id)
        for path in [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]:
            if path.is_file():
                return path
        return None

    def image(self, index: int, draft: Optional[int] = None) -> Image.Image:
        """Item ``index`` decoded to RGB, or ItemNotFound saying why not.

        ``draft`` (the model's input size): a JPEG file is decoded as encode decoded it by default
        (:func:`brcd_cli.data.decode_image`), so searching with a result finds the result's own code.
        """
        path = self.path_of(index)
        if path is not None:
            return read_image_file(path, draft)
        item_id = self.collection.item(index).id
        found = self._built_in_item(item_id)
        if found is None:
            raise ItemNotFound(f"no image found for item {index} ({item_id}): its id is not a file under "
                               f"{', '.join(map(str, self.roots))}")
        source, position = found
        return source.load(position)

    def _built_in_item(self, item_id: str) -> Optional[tuple[ImageSource, int]]:
        name = item_id.split("/", 1)[0]
        with self._lock:
            if name not in self._sources:
                source = _built_in(name)
                if source is None:
                    return None
                self._sources[name] = (source, {i: j for j, i in enumerate(source.ids)})
            source, positions = self._sources[name]
        return (source, positions[item_id]) if item_id in positions else None

    def thumbnail(self, index: int) -> bytes:
        """A small JPEG of item ``index``; small images are enlarged with hard pixel edges so they stay legible."""
        with self._lock:
            if index in self._thumbs:
                self._thumbs.move_to_end(index)
                return self._thumbs[index]
        image = self.image(index)
        longest = max(image.size)
        if longest < THUMB_SIZE // 2:
            factor = THUMB_SIZE // longest
            image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._thumbs[index] = data
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return data
