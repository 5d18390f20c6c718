"""The evaluate stage: mAP@k of an index on labelled query embeddings, beside float cosine."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .errors import InputError, MismatchError
from .index import HashIndex
from .metrics import mean_average_precision, precision_at_k, relevance
from .retrieval import DEFAULT_RERANK, cosine_knn, ranked
from .store import Embeddings, open_embeddings
from .validate import check_k

logger = logging.getLogger(__name__)


def evaluate(
    index: HashIndex, queries: Embeddings, topk: int = 1000, *, db: Embeddings | None = None, with_float: bool = True,
    rerank: int | None = None, asymmetric: bool = False,
) -> dict:  # fmt: skip
    """mAP@topk and precision@topk of Hamming ranking (ties by id), and of float cosine.

    Args:
        index: the loaded index (its items carry the database labels).
        queries: labelled query embeddings from the same backbone.
        topk: ranking depth.
        db: the database embeddings for the float reference (default: the file the index
            was built from, when it still exists).
        with_float: compute the float cosine reference.
        rerank: re-rank the Hamming top ``rerank·topk`` (float cosine, or asymmetric).
        asymmetric: re-rank by the query's sigmoid(logits) against the database bits.

    Returns:
        A dict with ``map``, ``precision``, ``search_qps``, ``float_map``, ``float_precision``,
        ``float_qps`` (None when the database embeddings are unavailable), ``topk``, ``nq``,
        ``bits``, ``method`` and bytes per item of codes and float vectors.

    Raises:
        InputError: missing labels, bad topk.
        MismatchError: queries from another backbone.
    """
    topk = check_k(topk)
    index.check_queries(queries)
    q_labels = queries.labels()
    items = index.items()
    if q_labels is None or items["labels"] is None:
        raise InputError("evaluate needs labels on both the queries and the indexed items")
    xq = queries.embeddings()
    t0 = time.perf_counter()
    _, ids, _ = ranked(index, xq, topk, rerank, asymmetric)
    search_s = time.perf_counter() - t0
    rel = relevance(q_labels, items["labels"], ids)
    out = {
        "index": str(index.path),
        "queries": str(queries.path),
        "method": index.probe.method,
        "supervised": bool(index.probe.config.get("supervised", False)),
        "bits": index.bits,
        "index_type": index.kind,
        "ranking": "hamming" if rerank is None and not asymmetric else f"{'asymmetric' if asymmetric else 'rerank-float'}-{rerank or DEFAULT_RERANK}",
        "topk": topk,
        "nq": len(xq),
        "ntotal": index.ntotal,
        "map": mean_average_precision(rel),
        "precision": precision_at_k(rel),
        "search_qps": len(xq) / search_s if search_s > 0 else None,
        "code_bytes_per_item": index.bits // 8,
        "float_bytes_per_item": 4 * queries.dim,
        "float_map": None,
        "float_precision": None,
        "float_qps": None,
    }
    if with_float:
        if db is None:
            path = index.manifest.embeddings.get("path")
            if path and Path(path).exists():
                db = open_embeddings(path)
            else:
                logger.warning("database embeddings %s are gone: no float reference (pass them explicitly)", path)
        if db is not None:
            if db.n != index.ntotal:
                raise MismatchError(f"{db.path} holds {db.n} embeddings, the index {index.ntotal} codes")
            xb = db.embeddings()
            t0 = time.perf_counter()
            _, fids = cosine_knn(xq, xb, topk)
            out["float_qps"] = len(xq) / (time.perf_counter() - t0)
            frel = relevance(q_labels, items["labels"], fids)
            out["float_map"] = mean_average_precision(frel)
            out["float_precision"] = precision_at_k(frel)
    return out
