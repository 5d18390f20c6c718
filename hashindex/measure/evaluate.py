"""The evaluate stage: mAP@k of an index on labelled query embeddings, beside float cosine."""

from __future__ import annotations

import logging
import time

import numpy as np

from hashindex.core.config import DEFAULT_RERANK
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.validate import check_k
from hashindex.measure.metrics import mean_average_precision, precision_at_k, relevance
from hashindex.search.exact import cosine_knn
from hashindex.store.reader import Embeddings

logger = logging.getLogger(__name__)


def check_label_space(a_names, a_cols: int, b_names, b_cols: int, a: str, b: str) -> None:
    """Raises MismatchError unless two label spaces are the same classes in the same order
    (compared by name; unnamed columns by count): positions mean nothing across other orders."""
    if a_names is None or b_names is None:
        if a_cols != b_cols or a_names != b_names:
            raise MismatchError(
                f"the labels of {a} ({a_cols} columns) and {b} ({b_cols} columns) are not the same classes"
            )
        return
    if list(a_names) != list(b_names):
        raise MismatchError(
            f"the label names of {a} ({', '.join(a_names[:4])}...) and {b} ({', '.join(b_names[:4])}...) differ "
            "or come in another order: labels are compared by position, so both must use the same classes in the same order"
        )


def evaluate(
    snap,
    queries: Embeddings,
    topk: int = 1000,
    *,
    db: Embeddings | None = None,
    with_float: bool = True,
    rerank: int | None = None,
    asymmetric: bool = False,
    nprobe: int | None = None,
) -> dict:
    """mAP@topk and precision@topk of Hamming ranking (ties by id), and of float cosine.

    Args:
        snap: the index's snapshot (:attr:`hashindex.Index.snapshot`: added items included, their
            float embeddings from the commits), or an :class:`~hashindex.api.index.Index`.
        queries: labelled query embeddings from the same backbone.
        topk: ranking depth.
        db: the database embeddings for the float reference (default: the file the index
            was built from, when it still exists, plus the added items' kept embeddings).
        with_float: compute the float cosine reference.
        rerank: re-rank the Hamming top ``rerank·topk`` (float cosine, or asymmetric).
        asymmetric: re-rank by the query's sigmoid(logits) against the database bits.
        nprobe: IVF lists visited per query.

    Returns:
        A dict with ``map``, ``precision``, ``search_qps``, ``float_map``, ``float_precision``,
        ``float_qps`` (None when the database embeddings are unavailable), ``topk``, ``nq``,
        ``bits``, ``method`` and bytes per item of codes and float vectors; ``asymmetric_map`` and
        ``asymmetric_precision``: the whole database ranked by the asymmetric distance (the CroVCA
        paper's figure); for an IVF index, ``ivf``: recall of the flat top-k of the same codes at
        its nprobe (see :func:`hashindex.measure.bench_seeds.ivf_rows`).

    Raises:
        InputError: missing labels, bad topk.
        MismatchError: queries from another backbone.
    """
    snap = getattr(snap, "snapshot", snap)
    topk = check_k(topk)
    base = snap.base
    base.check_queries(queries)
    q_labels, db_labels = queries.labels(), snap.labels
    if q_labels is None or db_labels is None:
        raise InputError("evaluate needs labels on both the queries and the indexed items")
    if queries.n == 0 or snap.ntotal == 0:
        raise InputError(
            f"nothing to evaluate: {queries.path} holds {queries.n} queries, the index {snap.ntotal} items"
        )
    where = f"index {base.path}"
    check_label_space(
        queries.label_names, q_labels.shape[1], snap.label_names, db_labels.shape[1], str(queries.path), where
    )
    xq = queries.embeddings()
    t0 = time.perf_counter()
    rows = snap.search(xq, topk, rerank, asymmetric, nprobe=nprobe).I
    search_s = time.perf_counter() - t0
    rel = relevance(q_labels, db_labels, rows)
    ranking = (
        "hamming"
        if rerank is None and not asymmetric
        else f"{'asymmetric' if asymmetric else 'rerank-float'}-{rerank or DEFAULT_RERANK}"
    )
    out = {
        "index": str(base.path),
        "queries": str(queries.path),
        "method": base.probe.method,
        "supervised": bool(base.probe.config.get("supervised", False)),
        "bits": snap.bits,
        "index_type": snap.kind,
        "ranking": ranking,
        "topk": topk,
        "nq": len(xq),
        "ntotal": snap.ntotal,
        "map": mean_average_precision(rel),
        "precision": precision_at_k(rel, topk),
        "search_qps": len(xq) / search_s if search_s > 0 else None,
        "code_bytes_per_item": snap.bits // 8,
        "float_bytes_per_item": 4 * queries.dim,
        "float_map": None,
        "float_precision": None,
        "float_qps": None,
    }
    out.update(_paper_and_ivf(snap, xq, q_labels, topk, nprobe))
    xb = _database(snap, db) if with_float else None
    if xb is not None:
        t0 = time.perf_counter()
        _, fids = cosine_knn(xq, xb, topk)
        out["float_qps"] = len(xq) / (time.perf_counter() - t0)
        frel = relevance(q_labels, db_labels, fids)
        out["float_map"] = mean_average_precision(frel)
        out["float_precision"] = precision_at_k(frel, topk)
    return out


def _database(snap, db: Embeddings | None) -> np.ndarray | None:
    """The float embeddings of the snapshot's rows: ``db`` (checked against the index), or
    the build's file and the kept embeddings of added items; None (with a warning) when gone."""
    if db is not None:
        if snap.is_base():
            snap.base.check_database(db)
        else:  # after adds or removes the build's file is not the items
            if db.n != snap.ntotal:
                raise MismatchError(f"{db.path} holds {db.n} embeddings, the index {snap.ntotal} items")
            snap.base.check_queries(db)
        return db.embeddings()
    rows = snap.float_rows()
    try:
        return rows.take(np.arange(snap.ntotal))
    except MismatchError:
        raise
    except InputError as e:
        logger.warning("%s: no float reference (pass the database embeddings explicitly)", e)
        return None
    finally:
        rows.close()


def _paper_and_ivf(snap, xq, q_labels, topk: int, nprobe) -> dict:
    """Asymmetric ranking of the whole database; for IVF, recall of the exact top-k."""
    from hashindex.core.config import IndexConfig
    from hashindex.measure.bench_seeds import ivf_rows
    from hashindex.search.asymmetric import asymmetric_knn
    from hashindex.search.engines import CodeIndex

    logits = snap.probe.logits(xq)
    k = min(topk, snap.ntotal)
    _, arows = asymmetric_knn(logits, snap.codes, k)
    arel = relevance(q_labels, snap.labels, arows)
    out = {
        "asymmetric_map": mean_average_precision(arel),
        "asymmetric_precision": precision_at_k(arel, topk),
        "ivf": None,
    }
    # The IVF recall compares the lists' ids with rows: measured where they coincide.
    if snap.kind == "ivf" and snap.is_base():
        q_codes = np.packbits(logits > 0, axis=1)
        fd, frows = CodeIndex.from_codes(snap.codes, IndexConfig("flat")).search(q_codes, k)
        fi = snap.faiss_index
        out["ivf"] = next(ivf_rows(fi, frows, fd, q_codes, q_labels, snap.labels, k, (nprobe or fi.nprobe,)), None)
    return out
