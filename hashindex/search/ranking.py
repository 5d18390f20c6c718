"""Ranking: queries in, ranked rows out, for every mode.

- Hamming top-k over a :class:`~hashindex.search.engines.CodeIndex` (any kind, on the CPU, or a
  flat one on a GPU), optionally among the rows a filter allows: ties by id, never an id −1.
- Re-ranking of the Hamming top ``R·k``: by float cosine against the database embeddings
  (:mod:`hashindex.search.rerank`), or by the asymmetric distance between a query's
  sigmoid(logits) and the database bits (:mod:`hashindex.search.asymmetric`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hashindex.core.config import DEFAULT_RERANK, Device
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.validate import check_codes, check_k
from hashindex.search.ordering import sort_results  # noqa: F401 - part of this module's interface


class Ranked(NamedTuple):
    """Ranked results: Hamming distances ``D``, rows ``I`` and re-rank scores ``S`` (cosine
    similarity or asymmetric distance; None without re-ranking), each ``(nq, k)``."""

    D: np.ndarray
    I: np.ndarray
    S: np.ndarray | None


def hamming_rows(ci, codes: np.ndarray, k: int, device: Device | None = "cpu", *, nprobe=None, allowed=None):
    """Top-k rows of a :class:`~hashindex.search.engines.CodeIndex` by Hamming distance.

    Args:
        ci: the codes and their engine.
        codes: ``(nq, bits // 8)`` uint8 packed query codes.
        k: results per query; more than the rows allowed gives all of them.
        device: where a flat index is scanned: ``cuda`` (or ``auto`` when CUDA is there) on the
            GPU (:mod:`hashindex.search.gpu`, the same results); other kinds and filtered
            searches stay on the CPU.
        nprobe: IVF lists visited (default: the index's).
        allowed: the rows results may come from (:class:`~hashindex.search.filters.Allowed`).

    Returns:
        ``(D, rows)``: int32 distances and int64 rows, ordered by distance then row.

    Raises:
        InputError: bad k, bad codes, an empty index, ``cuda`` without a CUDA device.
    """
    k = check_k(k)
    codes = check_codes(codes, ci.bits)
    if device not in (None, "cpu") and allowed is None and ci.kind == "flat" and ci.ntotal:
        from hashindex.search.gpu import device_search, search_device

        if search_device(device) == "cuda":
            return device_search(ci, codes, min(k, ci.ntotal), "cuda")
    return ci.search(codes, k, nprobe=nprobe, allowed=allowed)


def hamming_search(ci, codes: np.ndarray, k: int, device: Device | None = "cpu", **kw):
    """:func:`hamming_rows` answering with ids: ``(D, ids)``."""
    d, rows = hamming_rows(ci, codes, k, device, **kw)
    return d, ci.ids[rows]


def search_embeddings(ci, x: np.ndarray, k: int, device: Device | None = "cpu", **kw):
    """Encode float embeddings with the index's probe, then :func:`hamming_search`: ``(D, ids)``.

    Raises:
        InputError: bad k, or embeddings that are not finite floats of shape ``(n, dim)``.
        MismatchError: embeddings of another width than the probe's.
    """
    check_k(k)
    return hamming_search(ci, ci.probe.encode(x), k, device, **kw)


def ranked(
    ci,
    x: np.ndarray,
    k: int,
    rerank: int | None = None,
    asymmetric: bool = False,
    *,
    rows=None,
    device: Device | None = "cpu",
    nprobe=None,
    allowed=None,
) -> Ranked:
    """Hamming top-k rows of float query embeddings, optionally re-ranked.

    Args:
        ci: the codes, their engine and probe.
        x: ``(nq, D)`` float query embeddings.
        k: results per query.
        rerank: re-rank the Hamming top ``rerank·k`` (default factor 4 when ``asymmetric``).
        asymmetric: re-rank by the asymmetric distance instead of float cosine.
        rows: the database's float rows for float re-ranking (``take(rows)``, ``shape``, ``path``).
        device, nprobe, allowed: as :func:`hamming_rows`.

    Raises:
        InputError: bad k or R, bad embeddings, no database rows for float re-ranking.
        MismatchError: embeddings of another width, database rows of another count.
    """
    from hashindex.search.asymmetric import rerank_asymmetric
    from hashindex.search.rerank import carry_over, rerank_float

    k = check_k(k)
    if rerank is None and not asymmetric:
        d, r = hamming_rows(ci, ci.probe.encode(x), k, device, nprobe=nprobe, allowed=allowed)
        return Ranked(d, r, None)
    r = DEFAULT_RERANK if rerank is None else rerank
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise InputError(f"rerank factor must be a positive integer, got {rerank!r}", setting="rerank")
    logits = ci.probe.logits(x)
    dc, cand = hamming_rows(ci, np.packbits(logits > 0, axis=1), int(r) * k, device, nprobe=nprobe, allowed=allowed)
    if asymmetric:
        s, pos = rerank_asymmetric(logits, cand, ci.codes, k)
    else:
        if rows is None:
            raise InputError("float re-ranking needs the database embeddings, which are not available")
        if rows.shape[0] != ci.ntotal:
            raise MismatchError(f"{rows.path} holds {rows.shape[0]} embeddings, the index {ci.ntotal} codes")
        s, pos = rerank_float(x, cand, rows, k)  # x was validated by logits()
    d = carry_over(dc, cand, pos) if len(pos) else dc[:, :0]
    return Ranked(d, pos, s)
