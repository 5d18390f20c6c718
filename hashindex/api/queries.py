"""What a search is asked with: image files (or folders of them), PIL images, uint8 arrays,
float embeddings or item ids, told apart by their type, and turned into groups that search
together."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.embedding.decode import DecodeError, decode_image, pil_to_rgb


@dataclass
class Batch:
    """Queries of one kind: ``images`` (decoded arrays), ``embeddings`` (float rows) or ``ids``."""

    kind: str
    names: list[str] = field(default_factory=list)
    values: list = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # positions among all queries


def _image_files(folder: Path) -> list[Path]:
    from hashindex.embedding.decode import IMAGE_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
    if not files:
        raise InputError(f"no images found in {folder}")
    return files


def classify(queries, draft: int | None = None) -> tuple[list[Batch], int]:
    """Group queries by kind (images decoded now, JPEGs at a scale no smaller than ``draft``).

    Accepted: a path or a folder of images (``str``/``PathLike``), a PIL image, a uint8 array
    ``(H, W, 3)`` (or ``(H, W)`` gray, or ``(n, H, W, 3)``), a float array ``(D,)`` or ``(n, D)``,
    an int id or an integer array of ids, or a list of any of these.

    Returns:
        The batches and the number of queries.

    Raises:
        InputError: a query of no known kind, or an image that cannot be read.
    """
    groups = {k: Batch(k) for k in ("images", "embeddings", "ids")}
    count = 0

    def add(kind: str, name: str, value) -> None:
        nonlocal count
        g = groups[kind]
        g.names.append(name)
        g.values.append(value)
        g.order.append(count)
        count += 1

    def one(q) -> None:
        if isinstance(q, (str, os.PathLike)):
            p = Path(q)
            for f in _image_files(p) if p.is_dir() else [p]:
                try:
                    add("images", str(f), decode_image(str(f), draft))
                except DecodeError as e:
                    raise InputError(f"cannot read query image {e}") from None
        elif type(q).__module__.startswith("PIL.") and hasattr(q, "convert"):
            add("images", f"image {count}", pil_to_rgb(q))
        elif isinstance(q, (int, np.integer)) and not isinstance(q, bool):
            add("ids", f"id {int(q)}", int(q))
        elif isinstance(q, np.ndarray):
            array(q)
        elif isinstance(q, (list, tuple)) and q and all(isinstance(v, float) for v in q):
            add("embeddings", f"embedding {count}", np.asarray(q, np.float64))  # one vector as a list
        elif isinstance(q, (list, tuple)):
            for v in q:
                one(v)
        else:
            raise InputError(
                f"cannot search with a {type(q).__name__}: give image paths, PIL images, uint8 arrays, float embeddings or ids"
            )

    def array(a: np.ndarray) -> None:
        if a.dtype == np.uint8 and a.ndim in (2, 3) and (a.ndim == 2 or a.shape[2] in (1, 3, 4)):
            add("images", f"image {count}", _rgb(a))
        elif a.dtype == np.uint8 and a.ndim == 4:
            for im in a:
                add("images", f"image {count}", _rgb(im))
        elif a.dtype.kind == "f" and a.ndim in (1, 2):
            for row in np.atleast_2d(a):
                add("embeddings", f"embedding {count}", row)
        elif a.dtype.kind in "iu" and a.ndim in (0, 1):
            for v in np.atleast_1d(a):
                add("ids", f"id {int(v)}", int(v))
        else:
            raise InputError(
                f"cannot search with an array of shape {a.shape} and type {a.dtype}: images are uint8 (H, W, 3), "
                "embeddings float (n, D), ids integers"
            )

    one(queries)
    if count == 0:
        raise InputError("no queries given")
    return [g for g in groups.values() if g.values], count


def _rgb(a: np.ndarray) -> np.ndarray:
    """A uint8 image array as ``(H, W, 3)`` (gray repeated, alpha dropped)."""
    if a.ndim == 2 or a.shape[2] == 1:
        a = np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"an image array of shape {a.shape} has no pixels")
    return np.ascontiguousarray(a[:, :, :3])
