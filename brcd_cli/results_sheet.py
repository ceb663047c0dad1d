"""A self-contained HTML sheet of search results: each query beside its hits, every picture embedded.

What ``brcd search --html`` writes: one file that opens anywhere (no server,
nothing fetched), for looking at results or sending them to someone. Hit
pictures are found from each item's own id, as the server's thumbnails are
(:class:`~brcd_cli.serve.images.ItemImages`); an item without a findable image
shows its id alone.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence


from .atomic import atomic_write_text
from .data import read_image_file
from .errors import DataError
from .pipeline import QueryResult, display_id
from .serve.images import THUMB_SIZE, ItemImages

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d232a; background: #f6f7f9; }
h1 { font-size: 1.2rem; } .query { background: #fff; border-radius: 10px; padding: 1rem; margin-bottom: 1.2rem; }
.row { display: flex; flex-wrap: wrap; gap: .6rem; align-items: flex-start; }
figure { margin: 0; width: 140px; font-size: .75rem; } figure.q { width: 170px; }
img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eceff3; border-radius: 4px; }
figcaption { overflow-wrap: anywhere; } .error { color: #b3261e; } .none { color: #5b6470; }
"""


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _query_thumbnail(path: Path) -> bytes:
    image = read_image_file(path)
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _figure(jpeg: bytes | None, caption: str, css: str = "") -> str:
    img = f'<img src="{_data_uri(jpeg)}" alt="">' if jpeg else '<img alt="no image">'
    return f'<figure class="{css}">{img}<figcaption>{caption}</figcaption></figure>'


def write_results_sheet(out: Path, results: Sequence[QueryResult], images: ItemImages, title: str) -> Path:
    """Write the sheet to ``out`` atomically; returns ``out``."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for result in results:
        name = html.escape(display_id(str(result.query)))
        parts.append("<section class='query'><div class='row'>")
        if result.error is not None:
            parts.append(_figure(None, f"{name}<br><span class='error'>{html.escape(result.error)}</span>", "q"))
        else:
            parts.append(_figure(_query_thumbnail(result.query), f"<b>query</b> {name}", "q"))
            if not result.hits:
                parts.append("<p class='none'>no codes found</p>")
            for hit, position in zip(result.hits, result.positions):
                try:
                    jpeg = images.thumbnail(position)
                except DataError:
                    jpeg = None
                parts.append(_figure(jpeg, f"#{hit.rank} · d = {hit.distance}<br>{html.escape(display_id(hit.id))}"))
        parts.append("</div></section>")
    parts.append("</body></html>")
    atomic_write_text(out, "".join(parts))
    return out
