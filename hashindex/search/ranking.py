"""Retrieval: queries in, ranked items out, for every mode.

- Hamming top-k over an index (flat, IVF or lookup): deterministic ties by id, never an id −1.
- Re-ranking of the Hamming top ``R·k``: by float cosine against the database embeddings (rows
  read from the HDF5 file, memory-mapped), or by the asymmetric distance between a query's
  sigmoid(logits) and the database bits.
- Exact float cosine kNN, the reference the others are measured against.

The index supplies what a mode needs (its faiss index, its codes, its probe); nothing here
reaches into faiss beyond a search call.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import h5py
import numpy as np

from hashindex.core.codes import unpack
from hashindex.core.config import DEFAULT_RERANK, Device
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.validate import check_codes, check_embeddings, check_k
from hashindex.index.load import HashIndex
from hashindex.probe.baselines import l2_normalize


class Ranked(NamedTuple):
    """Ranked results: Hamming distances ``D``, ids ``I`` and re-rank scores ``S`` (cosine
    similarity or asymmetric distance; None without re-ranking), each ``(nq, k)``."""

    D: np.ndarray
    I: np.ndarray
    S: np.ndarray | None


def sort_results(d: np.ndarray, i: np.ndarray, descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Order every row by distance (or score, when ``descending``), ties by ascending id."""
    key = -d if descending else d
    order = np.lexsort((i, key), axis=1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def hamming_search(
    index: HashIndex, codes: np.ndarray, k: int, device: Device | None = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by Hamming distance.

    Args:
        index: a loaded index.
        codes: ``(nq, bits // 8)`` uint8 packed query codes.
        k: results per query; more than ``ntotal`` gives ``ntotal``.
        device: where a flat index is scanned: ``cuda`` (or ``auto`` when CUDA is there) on the
            GPU (:mod:`hashindex.search.gpu`, the same results); IVF and lookup stay on the CPU.

    Returns:
        ``(D, I)``: int32 distances and int64 ids of shape ``(nq, min(k, ntotal))``, each row
        ordered by distance then id. IVF rows that found fewer than k codes in their probed lists
        are searched again over all lists, so no row carries the placeholder −1.

    Raises:
        InputError: bad k, bad codes, empty index, ``cuda`` without a CUDA device.
    """
    k = check_k(k)
    codes = check_codes(codes, index.bits)
    fi = index.faiss_index
    if fi.ntotal == 0:
        raise InputError("the index is empty")
    k = min(k, fi.ntotal)
    if device not in (None, "cpu"):
        from hashindex.search.gpu import device_search, search_device

        if search_device(device) == "cuda" and index.kind == "flat":
            return device_search(index, codes, k, "cuda")
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


def search_embeddings(
    index: HashIndex, x: np.ndarray, k: int, device: Device | None = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Encode float embeddings with the index's probe, then :func:`hamming_search` (on ``device``).

    Raises:
        InputError: bad k, or embeddings that are not finite floats of shape ``(n, dim)``.
        MismatchError: embeddings of another width than the probe's.
    """
    check_k(k)
    return hamming_search(index, index.probe.encode(x), k, device)


class FloatRows:
    """Random access to rows of ``/embeddings`` in an HDF5 file without loading the matrix.

    A contiguous, uncompressed dataset is memory-mapped (the OS page cache holds what is read);
    a chunked one is read with sorted HDF5 selections.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._f = h5py.File(self.path, "r")
        ds = self._f["embeddings"]
        self.shape = ds.shape
        self._mm = None
        if ds.chunks is None and ds.compression is None and ds.dtype == np.float32:
            offset = ds.id.get_offset()
            if offset is not None:
                self._mm = np.memmap(self.path, dtype=np.float32, mode="r", offset=offset, shape=ds.shape)
        self._ds = ds

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any shape) → float32 array of shape ``ids.shape + (D,)``."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if self._mm is not None:
            out = self._mm[flat]
        else:
            uniq, inv = np.unique(flat, return_inverse=True)
            out = self._ds[uniq][inv]
        return np.asarray(out, dtype=np.float32).reshape(*np.shape(ids), self.shape[1])

    def close(self) -> None:
        self._f.close()


def rerank_float(xq: np.ndarray, cand: np.ndarray, rows: FloatRows, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-order candidate ids by cosine similarity of the float vectors; top k by (score desc, id)."""
    qn = l2_normalize(np.asarray(xq, np.float32))
    # Gather candidates for a few queries at a time: R·k rows of D floats each.
    step = max(1, (256 << 20) // max(1, cand.shape[1] * rows.shape[1] * 4))
    s_out, i_out = [], []
    for s in range(0, len(cand), step):
        vec = rows.take(cand[s : s + step])
        sims = np.einsum("qd,qcd->qc", qn[s : s + step], vec) / np.maximum(np.linalg.norm(vec, axis=2), 1e-12)
        sc, ids = sort_results(sims.astype(np.float32), cand[s : s + step], descending=True)
        s_out.append(sc[:, :k])
        i_out.append(ids[:, :k])
    return np.concatenate(s_out), np.concatenate(i_out)


def asymmetric_distances(q_logits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    """``Σ_j |σ(z_qj) − b_j|`` between query probabilities and unpacked database bits
    ``(nq, c, bits)`` → ``(nq, c)``. As |p − b| summed = Σp + Σ b·(1 − 2p), it is one product."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(q_logits, np.float64)))
    return p.sum(1, keepdims=True) + np.einsum("qcb,qb->qc", db_bits, 1 - 2 * p)


def rerank_asymmetric(
    q_logits: np.ndarray, cand: np.ndarray, db_codes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order candidates by their asymmetric distance to the query (ascending, ties by id)."""
    step = max(1, (256 << 20) // max(1, cand.shape[1] * q_logits.shape[1]))  # unpacked bits per chunk
    d_out, i_out = [], []
    for s in range(0, len(cand), step):
        c = cand[s : s + step]
        bits = unpack(db_codes[c.ravel()]).reshape(*c.shape, -1)
        d, i = sort_results(asymmetric_distances(q_logits[s : s + step], bits).astype(np.float32), c)
        d_out.append(d[:, :k])
        i_out.append(i[:, :k])
    return np.concatenate(d_out), np.concatenate(i_out)


def _pick(values: np.ndarray, cand: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``values[q, j]`` where ``cand[q, j] == ids[q, r]``: carries candidates' Hamming distances
    over to their re-ranked order (ids are unique within a row)."""
    n = int(max(cand.max(initial=0), ids.max(initial=0))) + 1
    rows = np.arange(len(cand))[:, None] * n
    flat = (cand + rows).ravel()
    order = np.argsort(flat, kind="stable")
    pos = order[np.searchsorted(flat[order], (ids + rows).ravel())]
    return values.ravel()[pos].reshape(ids.shape)


def ranked(
    index: HashIndex,
    x: np.ndarray,
    k: int,
    rerank: int | None = None,
    asymmetric: bool = False,
    *,
    rows: FloatRows | None = None,
    db_codes: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    device: Device | None = "cpu",
) -> Ranked:
    """Hamming top-k of float query embeddings, optionally re-ranked.

    Args:
        index: the index.
        x: ``(nq, D)`` float query embeddings.
        k: results per query.
        rerank: re-rank the Hamming top ``rerank·k`` (default factor 4 when ``asymmetric``).
        asymmetric: re-rank by the asymmetric distance instead of float cosine.
        rows: database rows for float re-ranking (default: the embeddings file in the manifest).
        db_codes: database codes for asymmetric re-ranking (default: read from the index).
        ids: when the faiss index answers with ids rather than row positions (a live index's
            snapshot), the ascending ids of the rows of ``rows`` and ``db_codes``.
        device: where the Hamming search runs (:func:`hamming_search`).

    Raises:
        InputError: bad k or R, bad embeddings, missing database embeddings.
        MismatchError: embeddings of another width, database rows of another count.
    """
    k = check_k(k)
    if rerank is None and not asymmetric:
        d, ids = search_embeddings(index, x, k, device)
        return Ranked(d, ids, None)
    r = DEFAULT_RERANK if rerank is None else rerank
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise InputError(f"rerank factor must be a positive integer, got {rerank!r}")
    logits = index.probe.logits(x)
    n = index.ntotal if ids is None else len(ids)
    dc, cand = hamming_search(index, np.packbits(logits > 0, axis=1), min(int(r) * k, n), device)
    if ids is not None:
        cand = np.searchsorted(ids, cand)  # ids → rows (every id found is one of ``ids``)
    if asymmetric:
        s, pos = rerank_asymmetric(logits, cand, index.codes() if db_codes is None else db_codes, k)
    else:
        own = rows is None
        rows = _database_rows(index) if own else rows
        try:
            if rows.shape[0] != n:
                raise MismatchError(f"{rows.path} holds {rows.shape[0]} embeddings, the index {n} codes")
            s, pos = rerank_float(x, cand, rows, k)  # x was validated by logits()
        finally:
            if own:
                rows.close()
    d = _pick(dc, cand, pos) if len(pos) else dc[:, :0]
    return Ranked(d, pos if ids is None else ids[pos], s)


def _database_rows(index: HashIndex) -> FloatRows:
    return FloatRows(index.database().path)  # checked to be the file the index was built from


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
