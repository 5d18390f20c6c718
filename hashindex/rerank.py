"""Re-ranking of Hamming candidates: by float cosine (rows read from the embeddings file) or by
the asymmetric distance between a query's sigmoid(logits) and the database bits.

Both take the top ``R·k`` by Hamming distance and re-order them; ties stay deterministic (by id).
"""

from __future__ import annotations

import os
from typing import Literal

import h5py
import numpy as np

from .codes import hamming, pack, unpack
from .errors import InputError, MismatchError
from .index import HashIndex, stored_codes
from .search import check_k, hamming_search, l2_normalize, search_embeddings, sort_results

RerankMode = Literal["float", "asymmetric"]
DEFAULT_RERANK = 4


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


def rerank_asymmetric(q_logits: np.ndarray, cand: np.ndarray, db_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-order candidates by ``Σ_j |σ(z_qj) − b_j|`` (query probabilities vs database bits)."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(q_logits, np.float64)))
    step = max(1, (256 << 20) // max(1, cand.shape[1] * p.shape[1]))  # unpacked bits per chunk
    d_out, i_out = [], []
    for s in range(0, len(cand), step):
        c, ps = cand[s : s + step], p[s : s + step]
        bits = unpack(db_codes[c.ravel()]).reshape(*c.shape, -1)
        # |p − b| summed = Σp + Σ b·(1 − 2p): one matrix product per query.
        d = ps.sum(1, keepdims=True) + np.einsum("qcb,qb->qc", bits, 1 - 2 * ps)
        d, i = sort_results(d.astype(np.float32), c)
        d_out.append(d[:, :k])
        i_out.append(i[:, :k])
    return np.concatenate(d_out), np.concatenate(i_out)


def search_reranked(
    index: HashIndex,
    xq: np.ndarray,
    k: int,
    rerank: int,
    mode: RerankMode = "float",
    *,
    rows: FloatRows | None = None,
    db_codes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming top-``rerank·k``, re-ordered by float cosine or asymmetric distance.

    Args:
        index: the index.
        xq: ``(nq, D)`` float query embeddings.
        k: results per query.
        rerank: candidate multiplier R (>= 1).
        mode: ``float`` (cosine against the database embeddings file) or ``asymmetric``.
        rows: database rows for ``float`` (default: the embeddings file recorded in the manifest).
        db_codes: database codes for ``asymmetric`` (default: read from the index).

    Returns:
        ``(S, I)``: cosine scores (descending) or asymmetric distances (ascending), and ids.

    Raises:
        InputError: bad k or R, missing database embeddings.
    """
    k = check_k(k)
    if isinstance(rerank, bool) or int(rerank) != rerank or rerank < 1:
        raise InputError(f"rerank factor must be a positive integer, got {rerank!r}")
    logits = index.probe.logits(xq)
    _, cand = hamming_search(index, pack(logits), min(int(rerank) * k, index.ntotal))
    if mode == "asymmetric":
        return rerank_asymmetric(logits, cand, stored_codes(index.faiss_index) if db_codes is None else db_codes, k)
    if mode != "float":
        raise InputError(f"unknown re-rank mode {mode!r}: use float or asymmetric")
    own = rows is None
    if own:
        path = index.manifest["embeddings"]["path"]
        if not os.path.exists(path):
            raise InputError(f"float re-ranking reads the database embeddings {path}, which are gone: pass them explicitly")
        rows = FloatRows(path)
    try:
        if rows.shape[0] != index.ntotal:
            raise MismatchError(f"{rows.path} holds {rows.shape[0]} embeddings, the index {index.ntotal} codes")
        return rerank_float(xq, cand, rows, k)
    finally:
        if own:
            rows.close()


def ranked(index: HashIndex, x: np.ndarray, k: int, rerank: int | None = None, asymmetric: bool = False):
    """Hamming top-k, optionally re-ranked (``rerank`` = R, ``asymmetric`` picks the distance).

    Returns:
        ``(D, I, S)``: Hamming distances, ids, and re-rank scores (None without re-ranking).
    """
    if not rerank and not asymmetric:
        d, ids = search_embeddings(index, x, k)
        return d, ids, None
    db = stored_codes(index.faiss_index)  # read once: the asymmetric distance needs it too
    s, ids = search_reranked(index, x, k, rerank or DEFAULT_RERANK, "asymmetric" if asymmetric else "float", db_codes=db)
    codes = index.probe.encode(x)
    d = np.stack([hamming(codes[q : q + 1], db[ids[q]])[0] for q in range(len(ids))]) if len(ids) else ids
    return d, ids, s
