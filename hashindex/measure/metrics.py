"""Retrieval metrics over ranked result lists (a hit = query and item share a label)."""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError


def relevance(q_labels: np.ndarray, db_labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(nq, k)`` bool: does result ``ids[q, j]`` share at least one label with query q.

    Args:
        q_labels: ``(nq, C)`` multi-hot query labels.
        db_labels: ``(nb, C)`` multi-hot database labels.
        ids: ``(nq, k)`` ranked result ids.
    """
    if q_labels.shape[1] != db_labels.shape[1]:
        raise InputError(f"queries have {q_labels.shape[1]} label columns, the database {db_labels.shape[1]}")
    q = q_labels.astype(bool)
    return (
        np.stack([(db_labels[ids[r]].astype(bool) & q[r]).any(axis=1) for r in range(len(ids))])
        if len(ids)
        else np.zeros((0, ids.shape[1]), bool)
    )


def average_precision(rel: np.ndarray) -> np.ndarray:
    """AP@k of each ranked list: mean of precision@j over the ranks j of its hits within the list.

    This is the mAP@k of the deep-hashing literature (DeepHash ``CalcTopMap``): the denominator is
    the number of hits retrieved in the top k, and a list without any hit scores 0.

    Args:
        rel: ``(nq, k)`` bool relevance of each ranked result.

    Returns:
        ``(nq,)`` float64 average precisions.
    """
    rel = np.asarray(rel, dtype=bool)
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    prec_sum = (hits / ranks * rel).sum(axis=1)
    n = rel.sum(axis=1)
    return np.where(n > 0, prec_sum / np.maximum(n, 1), 0.0)


def mean_average_precision(rel: np.ndarray) -> float:
    """mAP over queries (see :func:`average_precision`)."""
    return float(average_precision(rel).mean()) if len(rel) else 0.0


def precision_at_k(rel: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of (hits in the list) / k; a list shorter than ``k`` (a database of
    fewer items) counts its missing places as misses. ``k`` defaults to the lists' length."""
    rel = np.asarray(rel, dtype=bool)
    if rel.ndim != 2 or rel.shape[0] == 0:
        return 0.0
    return float(rel.sum(axis=1).mean() / (k or rel.shape[1] or 1))
