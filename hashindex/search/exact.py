"""The paper's ranking: the whole database ordered by the asymmetric distance.

CroVCA reports mAP with the query kept real-valued: ``d(q, b) = Σ_j |σ(z_qj) − b_j|`` between the
query's sigmoid(logits) and each database code's bits (L1), over every item, not a Hamming
shortlist. It is a reference for quality (a full scan over unpacked bits), beside the symmetric
Hamming ranking that the index serves.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.codes import unpack
from hashindex.core.validate import check_k
from hashindex.search.ranking import sort_results


def asymmetric_knn(
    q_logits: np.ndarray, db_codes: np.ndarray, k: int, chunk_bytes: int = 256 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the whole database by ``Σ_j |σ(z_qj) − b_j|``; equal distances ordered by id.

    Args:
        q_logits: ``(nq, B)`` query logits.
        db_codes: ``(nb, B // 8)`` packed database codes.
        k: results per query (at most nb).
        chunk_bytes: size of one block of query-by-database distances.

    Returns:
        ``(D, I)``: float32 distances (ascending) and int64 ids, shape ``(nq, min(k, nb))``.
    """
    k = min(check_k(k), len(db_codes))
    p = (1.0 / (1.0 + np.exp(-np.asarray(q_logits, np.float64)))).astype(np.float32)
    bits = unpack(db_codes).astype(np.float32)  # (nb, B)
    # |p − b| summed = Σp + Σ b·(1 − 2p): one matrix product per block of queries.
    step = max(1, chunk_bytes // max(1, 4 * len(bits)))
    d_out, i_out = [], []
    for s in range(0, len(p), step):
        ps = p[s : s + step]
        d = ps.sum(1, keepdims=True) + (1 - 2 * ps) @ bits.T
        d_out_s, i_out_s = _top_k_ties_by_id(d, k)
        d_out.append(d_out_s)
        i_out.append(i_out_s)
    if not d_out:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(d_out), np.concatenate(i_out)


def _top_k_ties_by_id(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k smallest of ``d`` ordered by (value, column); exact at the k-th value's ties."""
    n = d.shape[1]
    if k < n:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(d, part, 1).max(1)
    else:
        kth = d.max(1)
    out_d = np.empty((len(d), k), np.float32)
    out_i = np.empty((len(d), k), np.int64)
    for r in range(len(d)):
        cand = np.flatnonzero(d[r] <= kth[r])  # every tie of the k-th value competes, by id
        cd, ci = sort_results(d[r, cand][None], cand[None].astype(np.int64))
        out_d[r], out_i[r] = cd[0, :k], ci[0, :k]
    return out_d, out_i
