"""Images of uploaded queries and of indexed items, served safely.

An item's image is served only from inside its recorded root folder (after symbolic links are
resolved, so neither ``..`` nor a link leads out of it), from the index's own upload store, or
rendered from an IDX source; its content type comes from the decoded format, never from a file
or client name. Uploads kept by the index are stored under names the server chooses.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.paths import inside
from hashindex.embedding.decode import pil_to_rgb
from hashindex.embedding.sources import from_idx

# Formats browsers display, by Pillow's name: stored and served as they are. Others become PNG.
WEB_FORMATS = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "GIF": ("image/gif", ".gif"),
    "WEBP": ("image/webp", ".webp"),
    "BMP": ("image/bmp", ".bmp"),
}
MEDIA_BY_SUFFIX = {suffix: media for media, suffix in WEB_FORMATS.values()}


def decode_upload(data: bytes, draft: int | None = None) -> tuple[np.ndarray, str]:
    """Decode uploaded bytes (EXIF, modes and transparency as for files; JPEGs at a scale no
    smaller than ``draft``). Returns the RGB array and the image's format name.

    Raises:
        InputError: empty or not a readable image (the message names no server path).
    """
    from PIL import Image

    if not data:
        raise InputError("the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            if draft and fmt == "JPEG":
                im.draft(None, (draft, draft))
            im.load()
            return pil_to_rgb(_reduced(im, draft) if draft else im), fmt
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"the upload is not a readable image ({type(e).__name__})") from None


def _reduced(im, side: int):
    """A decoded upload box-averaged by the largest integer factor that keeps both sides at least
    ``side`` (what JPEG draft does in the DCT, for every format): conversion and resizing then
    cost what the model's input costs, not what the upload's pixels do. The copy keeps the
    image's info (EXIF orientation included); a colour-key transparency would not survive
    averaging, so such images stay whole."""
    f = min(im.size) // side
    if f < 2 or im.mode not in ("L", "RGB", "RGBA", "LA") or "transparency" in im.info:
        return im
    return im.reduce(f)


def stored_upload(data: bytes, fmt: str) -> tuple[bytes, str]:
    """What the index keeps of an upload, and the suffix the server names it with: the bytes as
    they came for formats browsers show, else a PNG re-encoding."""
    if fmt in WEB_FORMATS:
        return data, WEB_FORMATS[fmt][1]
    rgb, _ = decode_upload(data)
    return _png(rgb, None), ".png"


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


def _file_image(path: Path, size: int | None) -> tuple[str, bytes]:
    """A file's bytes and media type by its decoded format (PNG rendering for other formats)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = im.format
            if not size and fmt in WEB_FORMATS:
                return WEB_FORMATS[fmt][0], path.read_bytes()
            im.load()
            return "image/png", _png(pil_to_rgb(im), size)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"the item's file is not a readable image ({type(e).__name__})") from None


def item_image(ix, snap, item_id: int, size: int | None = None) -> tuple[str, bytes]:
    """``(media type, bytes)`` of an item's image; ``size`` makes a PNG thumbnail of at most
    that many pixels a side.

    Raises:
        InputError: an unknown id, or an item whose image this server may not or cannot read.
    """
    p = int(snap.positions([item_id])[0])
    for rel in ix.live.state.uploads:  # names the server chose: uploads/<id>.<suffix>
        stem, suffix = os.path.splitext(os.path.basename(rel))
        if stem == str(item_id) and suffix in MEDIA_BY_SUFFIX:
            data = (ix.path / rel).read_bytes()
            if size:
                rgb, _ = decode_upload(data)
                return "image/png", _png(rgb, size)
            return MEDIA_BY_SUFFIX[suffix], data
    name = snap.name_list([p])[0]
    source = snap.base.manifest.embeddings.get("source") or {}
    src_idx = int(snap.source_index[p])
    if (
        snap.float_row[p] >= 0
        and isinstance(source, dict)
        and source.get("kind") in ("idx", "fashion-mnist")
        and src_idx >= 0
    ):
        try:
            rgb = _idx_source(str(source["location"]), str(source.get("split") or "train")).load(src_idx)
        except (InputError, IndexError, KeyError, OSError):
            raise InputError(f"item {item_id}: its source cannot be read") from None
        return "image/png", _png(rgb, size)
    path = inside(snap.root_of(p), name)
    if path is None:
        raise InputError(f"item {item_id} has no image this server can read")
    return _file_image(path, size)


def check_images(ix, snap, sample: int = 8) -> tuple[int, int]:
    """``(readable, tried)`` for a sample of items' images (the first, last and evenly between)."""
    n = snap.ntotal
    if n == 0:
        return 0, 0
    rows = sorted({int(r) for r in np.linspace(0, n - 1, min(sample, n))})
    ok = 0
    for r in rows:
        try:
            item_image(ix, snap, int(snap.ids[r]), 16)
            ok += 1
        except (InputError, OSError):
            pass
    return ok, len(rows)
