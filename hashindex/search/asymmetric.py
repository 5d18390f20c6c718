"""The asymmetric distance of CroVCA: the query kept real-valued, ``d(q, b) = Σ_j |σ(z_qj) − b_j|``
between the query's sigmoid(logits) and a database code's bits. It ranks a Hamming shortlist
(re-ranking) or the whole database (the paper's figure, a quality reference)."""

from __future__ import annotations

import numpy as np

from hashindex.core.codes import unpack
from hashindex.core.validate import check_k
from hashindex.search.ordering import sort_results


def probabilities(logits: np.ndarray) -> np.ndarray:
    """σ(z) as float32 (computed in float64: no overflow warnings for large logits)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))).astype(np.float32)


def distances(p: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``Σ_j |p_j − b_j|`` for probabilities ``p`` ``(nq, B)`` against 0/1 bits ``(nb, B)`` (every
    pair: ``(nq, nb)``) or ``(nq, c, B)`` (each query's own candidates: ``(nq, c)``). As
    |p − b| summed = Σp + Σ b·(1 − 2p), it is one product."""
    base, w = p.sum(1, keepdims=True), 1 - 2 * p
    if bits.ndim == 2:
        return base + w @ bits.T.astype(np.float32)
    return base + np.einsum("qcb,qb->qc", bits.astype(np.float32), w)


def rerank_asymmetric(
    q_logits: np.ndarray, cand: np.ndarray, db_codes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order candidate rows by their asymmetric distance to the query (ascending, ties by row)."""
    p = probabilities(q_logits)
    step = max(1, (256 << 20) // max(1, cand.shape[1] * p.shape[1] * 4))  # unpacked bits per chunk
    d_out, i_out = [], []
    for s in range(0, len(cand), step):
        c = cand[s : s + step]
        bits = unpack(db_codes[c.ravel()]).reshape(*c.shape, -1)
        d, i = sort_results(distances(p[s : s + step], bits), c)
        d_out.append(d[:, :k])
        i_out.append(i[:, :k])
    return np.concatenate(d_out), np.concatenate(i_out)


def asymmetric_knn(q_logits: np.ndarray, db_codes: np.ndarray, k: int, chunk_bytes: int = 256 << 20):
    """Top-k of the whole database by the asymmetric distance; equal distances ordered by row.

    Returns:
        ``(D, I)``: float32 distances (ascending) and int64 rows, shape ``(nq, min(k, nb))``.
    """
    k = min(check_k(k), len(db_codes))
    p = probabilities(q_logits)
    bits = unpack(db_codes)
    step = max(1, chunk_bytes // max(1, 4 * len(bits)))
    d_out, i_out = [], []
    for s in range(0, len(p), step):
        d, i = _top_k_ties_by_row(distances(p[s : s + step], bits), k)
        d_out.append(d)
        i_out.append(i)
    if not d_out:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(d_out), np.concatenate(i_out)


def _top_k_ties_by_row(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest of ``d`` ordered by (value, column); exact at the k-th value's ties."""
    n = d.shape[1]
    kth = np.take_along_axis(d, np.argpartition(d, k - 1, axis=1)[:, :k], 1).max(1) if k < n else d.max(1)
    out_d = np.empty((len(d), k), np.float32)
    out_i = np.empty((len(d), k), np.int64)
    for r in range(len(d)):
        cand = np.flatnonzero(d[r] <= kth[r])  # every tie of the k-th value competes, by row
        cd, ci = sort_results(d[r, cand][None], cand[None].astype(np.int64))
        out_d[r], out_i[r] = cd[0, :k], ci[0, :k]
    return out_d, out_i
