"""Images of uploaded queries and of indexed items (files on disk, IDX renders, kept uploads)."""

from __future__ import annotations

import functools
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.embedding.sources import DecodeError, decode_image, from_idx


def decode_upload(data: bytes, filename: str) -> np.ndarray:
    """Decode uploaded bytes with the same checks as files (size bombs, modes, EXIF).

    Raises:
        InputError: empty, not an image, or undecodable.
    """
    if not data:
        raise InputError("the uploaded file is empty")
    suffix = Path(filename).suffix if Path(filename).suffix.isascii() else ""
    with tempfile.NamedTemporaryFile(suffix=suffix[:8]) as fh:
        fh.write(data)
        fh.flush()
        try:
            return decode_image(fh.name)
        except DecodeError as e:
            raise InputError(
                f"the upload {filename!r} is not a readable image: {e.error_class}: {e.message}"[:400]
            ) from None


@functools.lru_cache(maxsize=4)
def _idx_source(location: str, split: str):
    return from_idx(location, split)


def _png(rgb: np.ndarray, size: int | None) -> bytes:
    from PIL import Image

    im = Image.fromarray(rgb)
    if size:
        im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def item_image(live, snap, item_id: int, size: int | None = None) -> tuple[str, object]:
    """``("file", path)`` or ``(media type, bytes)`` of an item's image; ``size`` makes a
    thumbnail of at most that many pixels a side.

    Raises:
        InputError: an unknown id, or an item whose image is not available.
    """
    p = int(snap.positions([item_id])[0])
    path = None
    for rel in live.state.uploads:
        if Path(rel).stem == str(item_id):
            path = live.path / rel
    name, src_idx = str(snap.names[p]), int(snap.source_index[p])
    source = live.manifest.embeddings.get("source") or {}
    if path is None and os.path.isabs(name):
        path = Path(name)
    if path is None and snap.float_row[p] >= 0 and isinstance(source, dict):
        if source.get("kind") in ("idx", "fashion-mnist") and src_idx >= 0:
            try:
                rgb = _idx_source(str(source["location"]), str(source.get("split") or "train")).load(src_idx)
            except (InputError, IndexError, KeyError, OSError) as e:
                raise InputError(f"item {item_id}: its source {source.get('location')} cannot be read: {e}") from None
            return "image/png", _png(rgb, size)
        if source.get("kind") in ("folder", "list") and source.get("location"):
            path = Path(str(source["location"])) / name
    if path is None or not path.is_file():
        raise InputError(f"item {item_id} ({name}) has no image this server can read")
    if size:
        try:
            return "image/png", _png(decode_image(str(path)), size)
        except DecodeError as e:
            raise InputError(f"item {item_id}: {e}") from None
    return "file", str(path)
