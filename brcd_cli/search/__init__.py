"""Search over packed codes through one contract (:mod:`.base`): flat scan, indexed, sharded and Milvus collections.

    with open_collection("codes.bin") as codes:
        result = codes.search(packed_queries, k=10)     # or codes.range_search(packed_queries, radius=2)
        hits = result.hits(0)
"""
from .base import (Collection, Hit, Item, SearchResult, check_compatible, check_k, check_radius, check_request, query,
                   request_of)
from .flat import FlatCodes
from .open_collection import open_codes_file, open_collection
from .sharded import ShardedCollection

__all__ = [
    "Collection",
    "FlatCodes",
    "Hit",
    "Item",
    "SearchResult",
    "ShardedCollection",
    "check_compatible",
    "check_k",
    "check_radius",
    "request_of",
    "check_request",
    "open_codes_file",
    "open_collection",
    "query",
]
