"""Exact references the indexes are measured against: float cosine kNN over the embeddings, and
the CroVCA paper's ranking of the whole database by the asymmetric distance
(:func:`hashindex.search.asymmetric.asymmetric_knn`)."""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.validate import check_embeddings, check_k
from hashindex.probe.baselines import l2_normalize
from hashindex.search.ordering import sort_results


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
