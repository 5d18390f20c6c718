"""Pixel agreement of two images, the second confirmation of a near-duplicate beside float cosine:
the normalised correlation of their 16 x 16 grayscale thumbnails, the larger of as-is and with
one of them mirrored.

Why a second signal: a generic backbone's embedding puts a picture close to other pictures of the
same kind of thing, so float cosine alone must stay high to be precise, and then misses many
copies (BENCHMARKS.md "Near-duplicates"). A re-encoded, resized, brightened or mirrored copy keeps
the layout of its pixels, which a small thumbnail's correlation sees (zero mean and unit norm make
it blind to brightness and contrast), while two different pictures rarely agree that closely.
Crops and rotations move the pixels; cosine is what finds those.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, prange

logger = logging.getLogger(__name__)
SIDE = 16  # thumbnail side: 8 to 24 pixels scored alike on the benchmark
DRAFT = 64  # JPEGs decoded at a DCT scale keeping at least this many pixels a side


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The ``SIDE`` x ``SIDE`` grayscale thumbnail (uint8) of an RGB or gray uint8 image (box
    filter: every source pixel counts once)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb)).convert("L")
    return np.asarray(im.resize((SIDE, SIDE), Image.BOX), np.uint8)


def _read(path) -> np.ndarray | None:
    from hashindex.embedding.decode import DecodeError, decode_image

    if path is None:
        return None
    try:
        return thumbnail(decode_image(str(path), DRAFT))
    except DecodeError as e:
        logger.debug("no thumbnail: %s", e)
        return None


def thumbnails(snap, rows: np.ndarray, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails of the rows' image files, read now (only files inside the collection's root,
    see ``Snapshot.file_of``): ``(thumbs, ok)``, ``ok`` False where a row has no readable file."""
    from tqdm.auto import tqdm

    out = np.zeros((len(rows), SIDE, SIDE), np.uint8)
    ok = np.zeros(len(rows), bool)
    paths = [snap.file_of(int(r)) for r in rows]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # decoding releases the GIL
        done = pool.map(_read, paths, chunksize=64)
        for t, th in enumerate(tqdm(done, total=len(rows), desc="thumbnails", unit="img", disable=not progress)):
            if th is not None:
                out[t], ok[t] = th, True
    return out, ok


def unit_vectors(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean, unit-norm rows of the thumbnails as they are and mirrored (left-right)."""

    def unit(a):
        a = a.reshape(len(a), -1).astype(np.float32)
        a -= a.mean(1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-6)

    return unit(thumbs), unit(thumbs[:, :, ::-1])


@njit(parallel=True, cache=True)
def pair_dots(x, y, pa, pb, out):
    """``out[t] = x[pa[t]] . y[pb[t]]`` without gathering the rows of every pair."""
    for t in prange(len(pa)):
        acc = np.float32(0.0)
        for d in range(x.shape[1]):
            acc += x[pa[t], d] * y[pb[t], d]
        out[t] = acc


def agreement(ua: np.ndarray, ub: np.ndarray, mb: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Per pair ``(pa[t], pb[t])``: the larger correlation of ``ua[pa]`` with ``ub[pb]`` and with
    its mirror ``mb[pb]`` (from :func:`unit_vectors`)."""
    plain, mirrored = np.empty(len(pa), np.float32), np.empty(len(pa), np.float32)
    pair_dots(ua, ub, pa, pb, plain)
    pair_dots(ua, mb, pa, pb, mirrored)
    return np.maximum(plain, mirrored)


def pixel_scores(snap, i: np.ndarray, j: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Pixel agreement of each pair of rows, NaN where either row's image cannot be read."""
    u, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
    thumbs, ok = thumbnails(snap, u, progress=progress)
    missing = int((~ok).sum())
    if missing:  # an index of arrays has no files to read: nothing to warn about
        log = logger.warning if any(snap.roots) else logger.info
        log(
            "%d of %d images could not be read (moved? see images_root): pairs confirmed by cosine only",
            missing,
            len(u),
        )
    plain, mirror = unit_vectors(thumbs)
    pa, pb = inv[: len(i)], inv[len(i) :]
    out = agreement(plain, plain, mirror, pa, pb)
    out[~(ok[pa] & ok[pb])] = np.nan
    return out


def against_rows(snap, thumbs: np.ndarray, pa: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Pixel agreement of ``thumbs[pa[t]]`` (thumbnails at hand: a query's) with the image of row
    ``rows[t]``, NaN where that image cannot be read."""
    u, inv = np.unique(rows, return_inverse=True)
    theirs, ok = thumbnails(snap, u)
    plain, mirror = unit_vectors(theirs)
    out = agreement(unit_vectors(np.asarray(thumbs, np.uint8))[0], plain, mirror, pa, inv)
    out[~ok[inv]] = np.nan
    return out
