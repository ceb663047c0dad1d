"""Collections that change: update a codes file in place as its folder changes, and remove items by id.

    update_collection(source, model_dir, "codes.bin")   # brcd encode images/ --out codes.bin --update
    remove_items("codes.bin", ["images/a.jpg"])        # brcd remove codes.bin images/a.jpg

Both rewrite the codes file through one staged, crash-safe commit
(:mod:`.commit`), keep the index beside it current, and keep the record of the
files behind the codes (:mod:`.stat_table`) that tells an update what changed.
"""
from .collection import UpdateResult, encode_recorded, record_files, update_collection
from .remove import RemoveResult, remove_items

__all__ = ["RemoveResult", "UpdateResult", "encode_recorded", "record_files", "remove_items", "update_collection"]
