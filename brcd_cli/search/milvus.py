"""Serving codes from Milvus: export a codes file as BINARY_VECTOR with HAMMING, and search it.

For collections that outgrow one machine's memory or need a server, Milvus
stores binary vectors and ranks them by Hamming distance (BIN_FLAT index:
exact). ``uri`` is a Milvus server (``http://host:19530``) or, with Milvus
Lite, a local ``.db`` file. Install with ``pip install 'brcd[milvus]'``.

Each row is one code: ``idx`` (its position in the codes file, the primary
key), ``code`` (the packed bytes, same bit order as the codes file, which is
the byte order Milvus expects) and ``item_id``. The collection description
records the bit length and code space so that ``search`` refuses queries from
a model of another code space, as it does for codes files.

Milvus orders equal distances as it likes, so at the k-th distance a tie may
be broken differently from brcd's exact search (which breaks ties by index);
the distances returned are the same.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import BrcdError, OptionError
from .base import CollectionBase, Item, SearchResult, ranked

DESCRIPTION_TAG = "brcd-codes/1"
MAX_LIMIT = 16384  # Milvus caps topk and range-search results at this many per query
MAX_ID_LENGTH = 65535
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _client(uri: str) -> Any:
    try:
        with warnings.catch_warnings():  # milvus-lite imports the deprecated pkg_resources; not the user's concern
            warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
            from pymilvus import MilvusClient
            import milvus_lite  # noqa: F401 - imported here, under the filter, before pymilvus needs it
    except ImportError:
        raise BrcdError("Milvus support needs pymilvus and milvus-lite: pip install 'brcd[milvus]'") from None
    try:
        return MilvusClient(uri)
    except Exception as exc:  # noqa: BLE001 - pymilvus raises many types for an unreachable server
        raise BrcdError(f"cannot connect to Milvus at {uri}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def default_collection(codes_path: Path) -> str:
    """A valid collection name from the codes file name (letters, digits and underscores)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(codes_path).stem) or "codes"
    return name if name[0].isalpha() or name[0] == "_" else f"c_{name}"


def _check_name(collection: str) -> None:
    if not _NAME.match(collection):
        raise BrcdError(f"collection name {collection!r} must start with a letter or _ and hold only letters, digits and _")


def _storable_id(item_id: str) -> str:
    """Milvus strings must be UTF-8: undecodable file-name bytes are stored as \\xNN escapes."""
    text = item_id.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text[:MAX_ID_LENGTH]


def export_codes(codes_path: Path, uri: str, collection: Optional[str] = None, overwrite: bool = False,
                 batch: int = 10000, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load a codes file into a new Milvus collection (BIN_FLAT, HAMMING); returns what was written."""
    from ..codes import read_codes

    collection = collection or default_collection(codes_path)
    _check_name(collection)
    client = _client(uri)
    from pymilvus import DataType, MilvusClient
    with read_codes(codes_path) as codes:
        if client.has_collection(collection):
            if not overwrite:
                raise BrcdError(f"collection {collection} already exists at {uri}; pass --force to replace it")
            client.drop_collection(collection)
        schema = MilvusClient.create_schema(auto_id=False, description=json.dumps({
            "format": DESCRIPTION_TAG, "bits": codes.bits, "code_space": codes.code_space, "producer": codes.producer,
        }))
        schema.add_field("idx", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=codes.bits)
        schema.add_field("item_id", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
        index = client.prepare_index_params()
        index.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        client.create_collection(collection, schema=schema, index_params=index)
        for start in range(0, codes.count, batch):
            stop = min(start + batch, codes.count)
            block = np.asarray(codes.codes[start:stop])
            ids = codes.ids[start:stop]
            client.insert(collection, [
                {"idx": start + j, "code": block[j].tobytes(), "item_id": _storable_id(ids[j])} for j in range(stop - start)
            ])
        count, bits = codes.count, codes.bits
    client.flush(collection)
    log(f"exported {count} {bits}-bit codes to collection {collection} at {uri}")
    return {"uri": uri, "collection": collection, "count": count, "bits": bits}


def collection_info(client: Any, uri: str, collection: str) -> dict[str, Any]:
    """The bit length and code space recorded at export; refuses collections brcd did not write."""
    _check_name(collection)
    if not client.has_collection(collection):
        raise BrcdError(f"no collection {collection} at {uri}; create it with brcd export milvus")
    try:
        info = json.loads(client.describe_collection(collection).get("description") or "{}")
    except ValueError:
        info = {}
    if not isinstance(info, dict) or info.get("format") != DESCRIPTION_TAG:
        raise BrcdError(f"collection {collection} at {uri} was not written by brcd export milvus")
    return info


class MilvusCollection(CollectionBase):
    """A collection written by :func:`export_codes`, searched by the Milvus server (or Milvus Lite file) at ``uri``.

    ``bits`` and ``code_space`` come from the description recorded at export,
    so the usual compatibility check applies; positions are the ``idx`` keys,
    the items' positions in the exported codes file.
    """

    def __init__(self, uri: str, collection: str) -> None:
        self._client = _client(uri)
        info = collection_info(self._client, uri, collection)
        self.uri, self.collection = uri, collection
        self.name = f"collection {collection}"
        self.bits = int(info["bits"])
        self.code_space = str(info.get("code_space", ""))
        self.count = int(self._client.get_collection_stats(collection).get("row_count", 0))

    def item(self, index: int) -> Item:
        """Looked up in Milvus; a result names its own hits from what the search returned (no lookup, nothing kept)."""
        rows = self._client.get(self.collection, ids=[int(index)], output_fields=["item_id"])
        if not rows:
            raise BrcdError(f"no item {index} in {self.name}")
        return Item(rows[0]["item_id"], int(index))

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        if k > MAX_LIMIT:
            raise OptionError("k", f"must be in 1..{MAX_LIMIT} for Milvus, got {k}")
        return self._query(queries, k, {"metric_type": "HAMMING"}, None)

    def _range_search(self, queries: np.ndarray, radius: int) -> SearchResult:
        # Milvus keeps integer distances < radius, so radius + 1 keeps those <= radius.
        params = {"metric_type": "HAMMING", "params": {"radius": radius + 1, "range_filter": 0}}
        return self._query(queries, MAX_LIMIT, params, radius)

    def _query(self, queries: np.ndarray, limit: int, params: dict[str, Any], radius: Optional[int]) -> SearchResult:
        """Rows sorted by (distance, index); with a radius, an error rather than a silently truncated answer."""
        found_rows = self._client.search(self.collection, data=[q.tobytes() for q in queries], limit=limit,
                                         anns_field="code", search_params=params, output_fields=["item_id"])
        rows, ids = [], {}
        for found in found_rows:
            if radius is not None and len(found) >= MAX_LIMIT:
                raise BrcdError(f"more than {MAX_LIMIT} codes lie within radius {radius}; use a smaller radius or -k")
            ids.update((int(h["id"]), h["entity"]["item_id"]) for h in found)
            rows.append((np.array([int(round(h["distance"])) for h in found], dtype=np.int32),
                         np.array([int(h["id"]) for h in found], dtype=np.int64)))
        return ranked(rows, None, lambda i: Item(ids[i], i))

    def close(self) -> None:
        self._client.close()
