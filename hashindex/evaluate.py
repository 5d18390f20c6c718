"""The evaluate stage: mAP@k of an index on labelled query embeddings, beside float cosine."""

from __future__ import annotations

import logging
import time

import numpy as np
from pathlib import Path

from .backbone import check_same_backbone
from .errors import InputError, MismatchError
from .index import HashIndex
from .metrics import mean_average_precision, precision_at_k, relevance
from .rerank import DEFAULT_RERANK, ranked
from .search import check_k, cosine_knn
from .store import Embeddings, open_embeddings

logger = logging.getLogger(__name__)


def check_queries_match(index: HashIndex, queries: Embeddings) -> None:
    """Raises MismatchError unless the query embeddings come from the index's backbone."""
    check_same_backbone(index.manifest["backbone"], queries.backbone, f"the codes of index {index.path}", f"the queries {queries.path}")


def evaluate(
    index: HashIndex, queries: Embeddings, topk: int = 1000, *, db: Embeddings | None = None, with_float: bool = True,
    rerank: int | None = None, asymmetric: bool = False,
) -> dict:  # fmt: skip
    """mAP@topk and precision@topk of Hamming ranking (ties by id), and of float cosine.

    Args:
        index: the loaded index (its items carry the database labels), or a live index's
            snapshot (added items included: their float embeddings come from the commits).
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
    from .snapshot import Snapshot

    topk = check_k(topk)
    snap = index if isinstance(index, Snapshot) else None
    index = snap.index if snap else index
    check_queries_match(index, queries)
    q_labels = queries.labels()
    db_labels = snap.labels if snap else index.items()["labels"]
    if q_labels is None or db_labels is None:
        raise InputError("evaluate needs labels on both the queries and the indexed items")
    xq = queries.embeddings()
    t0 = time.perf_counter()
    if snap:  # rows of db_labels are positions, results are ids
        ids = snap.positions(snap.search(xq, topk, rerank, asymmetric)[1]).reshape(len(xq), -1)
    else:
        _, ids, _ = ranked(index, xq, topk, rerank, asymmetric)
    search_s = time.perf_counter() - t0
    rel = relevance(q_labels, db_labels, ids)
    out = {
        "index": str(index.path),
        "queries": str(queries.path),
        "method": index.probe.method,
        "supervised": bool(index.probe.config.get("supervised", False)),
        "bits": index.bits,
        "index_type": index.kind,
        "ranking": "hamming" if not (rerank or asymmetric) else f"{'asymmetric' if asymmetric else 'rerank-float'}-{rerank or DEFAULT_RERANK}",
        "topk": topk,
        "nq": len(xq),
        "ntotal": snap.ntotal if snap else index.ntotal,
        "map": mean_average_precision(rel),
        "precision": precision_at_k(rel),
        "search_qps": len(xq) / search_s if search_s > 0 else None,
        "code_bytes_per_item": index.bits // 8,
        "float_bytes_per_item": 4 * queries.dim,
        "float_map": None,
        "float_precision": None,
        "float_qps": None,
    }
    xb = None
    if with_float and snap and db is None:
        rows = snap.float_rows()
        try:
            xb = rows.take(np.arange(snap.ntotal))
        except InputError as e:
            logger.warning("%s: no float reference (pass the database embeddings explicitly)", e)
        finally:
            rows.close()
    elif with_float:
        if db is None:
            path = Path(index.manifest["embeddings"]["path"])
            if path.exists():
                db = open_embeddings(path)
            else:
                logger.warning("database embeddings %s are gone: no float reference (pass them explicitly)", path)
        if db is not None:
            if db.n != out["ntotal"]:
                raise MismatchError(f"{db.path} holds {db.n} embeddings, the index {out['ntotal']} codes")
            xb = db.embeddings()
    if xb is not None:
        t0 = time.perf_counter()
        _, fids = cosine_knn(xq, xb, topk)
        out["float_qps"] = len(xq) / (time.perf_counter() - t0)
        frel = relevance(q_labels, db_labels, fids)
        out["float_map"] = mean_average_precision(frel)
        out["float_precision"] = precision_at_k(frel)
    return out
