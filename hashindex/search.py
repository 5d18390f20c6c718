"""Search: Hamming top-k over an index (deterministic ties, never an id −1) and float cosine kNN."""

from __future__ import annotations

import numpy as np

from .errors import InputError, MismatchError
from .index import HashIndex
from .probe.baselines import l2_normalize


def check_k(k: int) -> int:
    """Raises InputError unless ``k`` is a positive integer (an integral float such as 5.0 is
    accepted; bools, NaN, inf, strings and None are not)."""
    ok = isinstance(k, (int, float, np.integer, np.floating)) and not isinstance(k, (bool, np.bool_))
    if not ok or not float(k).is_integer() or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Validate packed query codes: ``uint8``, 2-D, ``bits // 8`` bytes wide.

    Returns:
        The codes as a C-contiguous array.

    Raises:
        InputError: wrong dtype, dimensionality or width.
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise InputError(f"codes must be uint8 (packed bits), got {codes.dtype}")
    if codes.ndim != 2:
        raise InputError(f"codes must be 2-D (n, {bits // 8}), got shape {codes.shape}")
    if codes.shape[1] * 8 != bits:
        raise InputError(f"codes have {codes.shape[1] * 8} bits, the index has {bits}")
    return np.ascontiguousarray(codes)


def check_embeddings(x: np.ndarray, dim: int, what: str = "embeddings") -> np.ndarray:
    """Validate float embeddings: a real floating dtype, 2-D ``(n, dim)``, every value finite
    (also after conversion to float32).

    Returns:
        The embeddings as a C-contiguous float32 array.

    Raises:
        InputError: wrong dtype, dimensionality or non-finite values.
        MismatchError: another width than ``dim``.
    """
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what} must be a 2-D float array: {e}") from None
    if x.dtype.kind != "f":
        raise InputError(f"{what} must be floating point (float16/32/64), got {x.dtype}")
    if x.ndim != 2:
        raise InputError(f"{what} must be 2-D (n, {dim}), got shape {x.shape}: pass one query as x[None]")
    if x.shape[1] != dim:
        raise MismatchError(f"{what} are {x.shape[1]}-d, but the index's probe expects {dim}-d embeddings")
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or inf values (or values beyond the float32 range)")
    return x


def sort_results(d: np.ndarray, i: np.ndarray, descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Order every row by distance (or score, when ``descending``), ties by ascending id."""
    key = -d if descending else d
    order = np.lexsort((i, key), axis=1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def hamming_search(index: HashIndex, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by Hamming distance.

    Args:
        index: a loaded index.
        codes: ``(nq, bits // 8)`` uint8 packed query codes.
        k: results per query; more than ``ntotal`` gives ``ntotal``.

    Returns:
        ``(D, I)``: int32 distances and int64 ids of shape ``(nq, min(k, ntotal))``, each row
        ordered by distance then id. IVF rows that found fewer than k codes in their probed lists
        are searched again over all lists, so no row carries the placeholder −1.

    Raises:
        InputError: bad k, bad codes, empty index.
    """
    k = check_k(k)
    codes = check_codes(codes, index.bits)
    fi = index.faiss_index
    if fi.ntotal == 0:
        raise InputError("the index is empty")
    k = min(k, fi.ntotal)
    if index.lookup is not None:
        return index.lookup.search(codes, k)  # exact, already ordered by (distance, id)
    d, i = fi.search(codes, k)
    short = (i < 0).any(axis=1)
    if short.any():
        nprobe = fi.nprobe
        fi.nprobe = fi.nlist  # exhaustive for the rows that came back short
        try:
            d[short], i[short] = fi.search(np.ascontiguousarray(codes[short]), k)
        finally:
            fi.nprobe = nprobe
    return sort_results(d.astype(np.int32), i.astype(np.int64))


def search_embeddings(index: HashIndex, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode float embeddings with the index's probe, then :func:`hamming_search`.

    Raises:
        InputError: bad k, or embeddings that are not finite floats of shape ``(n, dim)``.
        MismatchError: embeddings of another width than the probe's.
    """
    check_k(k)
    x = check_embeddings(x, index.probe.input_dim)
    return hamming_search(index, index.probe.encode(x), k)


def cosine_knn(xq: np.ndarray, xb: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact float cosine top-k (the float reference), rows by score then id.

    Returns:
        ``(S, I)``: float32 similarities and int64 ids, shape ``(nq, min(k, nb))``.

    Raises:
        InputError: bad k, an empty database, non-finite or non-float embeddings.
        MismatchError: queries and database of different widths.
    """
    import torch

    check_k(k)
    xb = np.asarray(xb)
    if getattr(xb, "ndim", 0) != 2 or len(xb) == 0:
        raise InputError(f"the database must be a non-empty 2-D array, got shape {np.shape(xb)}")
    xb = check_embeddings(xb, xb.shape[1], "database embeddings")
    xq = check_embeddings(xq, xb.shape[1], "query embeddings")
    k = min(check_k(k), len(xb))
    if len(xq) == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    qb = torch.from_numpy(l2_normalize(np.asarray(xq, np.float32)))
    bb = torch.from_numpy(l2_normalize(np.asarray(xb, np.float32)))
    s_out, i_out = [], []
    for s in range(0, len(qb), chunk):
        sims = qb[s : s + chunk] @ bb.T
        v, i = torch.topk(sims, k, dim=1)
        s_out.append(v.numpy())
        i_out.append(i.numpy().astype(np.int64))
    return sort_results(np.concatenate(s_out), np.concatenate(i_out), descending=True)
