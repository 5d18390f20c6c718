"""The evaluate stage: mAP@k of an index on labelled query embeddings, beside float cosine."""

from __future__ import annotations

import logging
import time

import numpy as np

from hashindex.core.config import DEFAULT_RERANK
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.validate import check_k
from hashindex.index.load import HashIndex
from hashindex.measure.metrics import mean_average_precision, precision_at_k, relevance
from hashindex.search.ranking import cosine_knn, ranked
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
    index: HashIndex,
    queries: Embeddings,
    topk: int = 1000,
    *,
    db: Embeddings | None = None,
    with_float: bool = True,
    rerank: int | None = None,
    asymmetric: bool = False,
) -> dict:
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
        ``bits``, ``method`` and bytes per item of codes and float vectors; ``asymmetric_map`` and
        ``asymmetric_precision``: the whole database ranked by the asymmetric distance (the CroVCA
        paper's figure); for an IVF index, ``ivf``: recall of the flat top-k of the same codes at
        the index's nprobe (see :func:`hashindex.measure.bench_seeds.ivf_rows`).

    Raises:
        InputError: missing labels, bad topk.
        MismatchError: queries from another backbone.
    """
    from hashindex.live.snapshot import Snapshot

    topk = check_k(topk)
    snap = index if isinstance(index, Snapshot) else None
    index = snap.index if snap else index
    index.check_queries(queries)
    q_labels = queries.labels()
    items = index.items()
    db_labels, db_label_names = (snap.labels, snap.label_names) if snap else (items["labels"], items["label_names"])
    ntotal = snap.ntotal if snap else index.ntotal
    if q_labels is None or db_labels is None:
        raise InputError("evaluate needs labels on both the queries and the indexed items")
    if queries.n == 0 or ntotal == 0:
        raise InputError(f"nothing to evaluate: {queries.path} holds {queries.n} queries, the index {ntotal} items")
    check_label_space(
        queries.label_names,
        q_labels.shape[1],
        db_label_names,
        db_labels.shape[1],
        str(queries.path),
        f"index {index.path}",
    )
    xq = queries.embeddings()
    t0 = time.perf_counter()
    if snap:  # rows of db_labels are positions, results are ids
        ids = snap.positions(snap.search(xq, topk, rerank, asymmetric).I).reshape(len(xq), -1)
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
        "ranking": "hamming"
        if rerank is None and not asymmetric
        else f"{'asymmetric' if asymmetric else 'rerank-float'}-{rerank or DEFAULT_RERANK}",
        "topk": topk,
        "nq": len(xq),
        "ntotal": ntotal,
        "map": mean_average_precision(rel),
        "precision": precision_at_k(rel, topk),
        "search_qps": len(xq) / search_s if search_s > 0 else None,
        "code_bytes_per_item": index.bits // 8,
        "float_bytes_per_item": 4 * queries.dim,
        "float_map": None,
        "float_precision": None,
        "float_qps": None,
    }
    # Positions of the codes are positions of db_labels (a live snapshot's own order); the IVF
    # recall compares ids with positions, so it is measured where they coincide.
    codes = snap.codes if snap else index.codes()
    out.update(_paper_and_ivf(index, codes, xq, q_labels, db_labels, topk, ivf=not snap or snap.is_base()))
    xb = None
    if with_float and snap and db is None:
        rows = snap.float_rows()
        try:
            xb = rows.take(np.arange(snap.ntotal))
        except MismatchError:
            raise
        except InputError as e:
            logger.warning("%s: no float reference (pass the database embeddings explicitly)", e)
        finally:
            rows.close()
    elif with_float:
        if db is None:
            try:
                db = index.database()
            except MismatchError:
                raise
            except InputError as e:
                logger.warning("%s: no float reference", e)
        elif snap and not snap.is_base():  # after adds or removes the build's file is not the items
            if db.n != ntotal:
                raise MismatchError(f"{db.path} holds {db.n} embeddings, the index {ntotal} items")
            index.check_queries(db)
        else:
            index.check_database(db)
        if db is not None:
            xb = db.embeddings()
    if xb is not None:
        t0 = time.perf_counter()
        _, fids = cosine_knn(xq, xb, topk)
        out["float_qps"] = len(xq) / (time.perf_counter() - t0)
        frel = relevance(q_labels, db_labels, fids)
        out["float_map"] = mean_average_precision(frel)
        out["float_precision"] = precision_at_k(frel, topk)
    return out


def _paper_and_ivf(index: HashIndex, db_codes, xq, q_labels, db_labels, topk: int, ivf: bool = True) -> dict:
    """Asymmetric ranking of the whole database; for IVF, recall of the exact top-k."""
    from hashindex.core.config import IndexConfig
    from hashindex.measure.bench_seeds import ivf_rows
    from hashindex.search.exact import asymmetric_knn
    from hashindex.search.ranking import hamming_search

    logits = index.probe.logits(xq)
    k = min(topk, len(db_codes))
    _, aids = asymmetric_knn(logits, db_codes, k)
    arel = relevance(q_labels, db_labels, aids)
    out = {
        "asymmetric_map": mean_average_precision(arel),
        "asymmetric_precision": precision_at_k(arel, topk),
        "ivf": None,
    }
    if ivf and index.kind == "ivf":
        q_codes = np.packbits(logits > 0, axis=1)
        fd, fids = hamming_search(HashIndex.from_codes(db_codes, index.probe, IndexConfig("flat")), q_codes, k)
        out["ivf"] = next(ivf_rows(index, fids, fd, q_codes, q_labels, db_labels, k, (index.faiss_index.nprobe,)), None)
    return out
