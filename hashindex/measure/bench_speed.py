"""The bench's speed sections: queries per second and latency of every index kind on the
collection's own codes and on clustered synthetic collections, beside float ``IndexFlatIP``,
all timed side by side in one process.

Beside flat, lookup and IVF: exact multi-index hashing (``mih``, codes longer than the lookup
table's 16 bits), the automatic choice (``auto``: :func:`hashindex.search.auto.choose` run on the
collection, its pick timed and compared with the best exact kind measured), the distribution of
the k-th neighbour distance (what decides between mih and a scan), and filtered searches
(``+filter`` rows) at 50%, 5% and 0.1% of the items allowed (random items, as a label's items are
to the codes), searched through ``CodeIndex.search(allowed=...)`` as ``Index.search(where=...)``
does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from hashindex.core.codes import MAX_LOOKUP_BITS
from hashindex.core.config import IndexConfig
from hashindex.measure.bench_memory import flat_memory
from hashindex.measure.bench_seeds import ivf_rows
from hashindex.measure.synthetic import clustered_codes, ivf_at_recall
from hashindex.probe.baselines import l2_normalize
from hashindex.search.engines import CodeIndex, FlatEngine, engine_for
from hashindex.search.filters import Allowed
from hashindex.search.ranking import hamming_search
from hashindex.search.rerank import FloatRows, rerank_float

logger = logging.getLogger(__name__)

SELECTIVITIES = (0.5, 0.05, 0.001)  # shares of the items a filtered search allows
REFERENCE_QUERIES = 20  # queries of each mih and filtered row checked against a NumPy popcount


def timed_search(fn, xq: np.ndarray, n_latency: int) -> dict:
    """Batched throughput over all of ``xq`` and single-query latencies over the first n."""
    fn(xq[:1])  # warm-up
    t0 = time.perf_counter()
    fn(xq)
    qps = len(xq) / (time.perf_counter() - t0)
    lat = []
    for i in range(min(n_latency, len(xq))):
        t = time.perf_counter()
        fn(xq[i : i + 1])
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1e3
    return {
        "qps": qps,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_ms": float(lat_ms.mean()),
    }


def side_by_side(fns: dict, q: np.ndarray, n_latency: int) -> dict[str, dict]:
    """Single-query latencies of several searches taking turns query by query, so that a shared
    machine's moments of load fall on each alike: ``{name: {"p50_ms", "mean_ms"}}``."""
    lat: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn(q[:1])  # warm-up
    for i in range(min(n_latency, len(q))):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(q[i : i + 1])
            lat[name].append(time.perf_counter() - t)
    return {
        name: {"p50_ms": float(np.percentile(v, 50) * 1e3), "mean_ms": float(np.mean(v) * 1e3)}
        for name, v in lat.items()
    }


def reference_topk(words: np.ndarray, qw: np.ndarray, k: int, rows: np.ndarray | None = None):
    """Exact top-k ``(D, rows)`` of one query by (distance, row), among ``rows`` when given, by
    NumPy's popcount over ``(n, W)`` uint64 words (independent of the kernels and of faiss)."""
    sub = words if rows is None else words[rows]
    d = np.zeros(len(sub), np.int64)
    for w in range(sub.shape[1]):
        d += np.bitwise_count(sub[:, w] ^ qw[w])
    k = min(k, len(d))
    kth = np.partition(d, k - 1)[k - 1]
    below = np.flatnonzero(d < kth)
    pos = np.concatenate([below, np.flatnonzero(d == kth)[: k - len(below)]])
    pos = pos[np.lexsort((pos, d[pos]))]
    return d[pos], (pos if rows is None else rows[pos])


def reference_mismatches(codes, q_codes, d, p, sample: int = 20, rows: np.ndarray | None = None) -> int:
    """How many of the first ``sample`` queries' results ``(d, p)`` differ from :func:`reference_topk`."""
    from hashindex.core.codes import as_words

    words, qw = as_words(codes), as_words(q_codes)
    bad = 0
    for r in range(min(sample, len(q_codes))):
        wd, wp = reference_topk(words, qw[r], d.shape[1], rows)
        bad += int(not (np.array_equal(wd, d[r]) and np.array_equal(wp, p[r])))
    return bad


def kth_distances(d: np.ndarray) -> dict:
    """The distribution of the k-th neighbour distance (the last column of exact results ``d``)."""
    last = np.asarray(d)[:, -1]
    vals, counts = np.unique(last, return_counts=True)
    return {
        "k": int(d.shape[1]),
        "queries": len(last),
        "min": int(last.min()),
        "p10": float(np.percentile(last, 10)),
        "p50": float(np.percentile(last, 50)),
        "p90": float(np.percentile(last, 90)),
        "max": int(last.max()),
        "histogram": {str(int(v)): int(c) for v, c in zip(vals, counts)},
    }


def exact_rows(codes, q_codes, k, fi, flat_d, n_latency) -> tuple[list[dict], dict[str, CodeIndex]]:
    """The exact kind beside flat (``lookup`` up to 16 bits, else ``mih`` with its default tables)
    and the automatic choice, each timed; their distances checked against ``flat_d``, the flat
    results (``fi``: the faiss flat index of ``codes``), and their ids against a NumPy popcount
    on the first :data:`REFERENCE_QUERIES` queries.

    Returns:
        ``(rows, indexes)``: the rows (kind ``lookup`` or ``mih``, then ``auto``), and the exact
        indexes by kind (``flat`` included) for the filtered rows.
    """
    from hashindex.search.auto import choose

    flat = CodeIndex(codes, None, FlatEngine(fi, codes), "flat")
    indexes, rows = {"flat": flat}, []
    kind = "lookup" if codes.shape[1] * 8 <= MAX_LOOKUP_BITS else "mih"
    t0 = time.perf_counter()
    ix = CodeIndex.from_codes(codes, IndexConfig(kind))
    build = time.perf_counter() - t0
    t = ix.engine.tables
    r = timed_search(lambda c: ix.search(c, k), q_codes, n_latency)
    d, p = ix.search(q_codes, k)
    size = t.order.nbytes + t.offsets.nbytes + t.codes.nbytes
    rows.append(
        dict(
            kind=kind,
            tables=int(t.m),
            build_seconds=build,
            tables_bytes_per_item=size / len(codes),
            exact=bool(np.array_equal(d, flat_d)),
            checked=min(REFERENCE_QUERIES, len(q_codes)),
            mismatches=reference_mismatches(codes, q_codes, d, p, REFERENCE_QUERIES),
            **r,
        )
    )
    indexes[kind] = ix
    t0 = time.perf_counter()
    cfg, tables = choose(codes, IndexConfig("auto"))
    chose = time.perf_counter() - t0
    if cfg.kind in indexes and cfg.kind != "mih":
        auto = indexes[cfg.kind]
    else:
        auto = CodeIndex(codes, None, engine_for(cfg, codes, flat.engine.fi, tables=tables), cfg.kind)
    r = timed_search(lambda c: auto.search(c, k), q_codes, n_latency)
    d, _ = auto.search(q_codes, k)
    turns = {name: (lambda c, x=x: x.search(c, k)) for name, x in indexes.items()}
    rows.append(
        dict(
            kind="auto",
            chosen=cfg.kind,
            tables=cfg.tables,
            reason=cfg.reason,
            choose_seconds=chose,
            exact=bool(np.array_equal(d, flat_d)),
            side_by_side=side_by_side({**turns, "auto": lambda c: auto.search(c, k)}, q_codes, n_latency),
            **r,
        )
    )
    return rows, indexes


def with_ratios(rows: list[dict]) -> list[dict]:
    """The auto row's latency relative to the best exact kind, both from the searches that took
    turns with it (``side_by_side``; mean and p50): a ratio of timings taken at different moments
    would measure the shared machine's load as much as the choice."""
    for r in rows:
        sb = r.get("side_by_side")
        if r["kind"] == "auto" and sb:
            exact = {name: v for name, v in sb.items() if name != "auto"}
            best = min(exact, key=lambda name: exact[name]["mean_ms"])
            r.update(
                best_kind=best,
                ratio_to_best=sb["auto"]["mean_ms"] / exact[best]["mean_ms"],
                ratio_to_best_p50=sb["auto"]["p50_ms"] / min(v["p50_ms"] for v in exact.values()),
            )
    return rows


def filtered_rows(
    indexes: dict[str, CodeIndex], q_codes, k, unfiltered: dict[str, dict], n_latency, seed
) -> list[dict]:
    """Filtered searches at each of :data:`SELECTIVITIES` through each exact index (``kind+filter``
    rows): a random set of that share of the items (at least one), unrelated to the codes as a
    label would be, given as a label filter gives it (sorted rows, resolved anew for each
    search); distances checked against the flat index's under the same filter;
    ``ratio_to_unfiltered``: mean latency over the same kind's unfiltered."""
    n = indexes["flat"].ntotal
    order = np.random.default_rng(seed).permutation(n)
    out = []
    for share in SELECTIVITIES:
        rows = np.sort(order[: max(1, round(share * n))])
        ref = None
        for kind, ix in indexes.items():
            r = timed_search(
                lambda c, ix=ix, rows=rows: ix.search(c, k, allowed=Allowed(rows=rows)), q_codes, n_latency
            )
            d, p = ix.search(q_codes, k, allowed=Allowed(rows=rows))
            ref = d if ref is None else ref
            bad = reference_mismatches(ix.codes, q_codes, d, p, REFERENCE_QUERIES, rows)
            out.append(
                dict(
                    kind=f"{kind}+filter",
                    selectivity=share,
                    allowed=len(rows),
                    routed="scan of the rows" if Allowed(rows=rows).is_small(n) else "index with a mask",
                    ratio_to_unfiltered=r["mean_ms"] / unfiltered[kind]["mean_ms"],
                    kth_p50=float(np.median(d[:, -1])),
                    exact=bool(np.array_equal(d, ref)),
                    checked=min(REFERENCE_QUERIES, len(q_codes)),
                    mismatches=bad,
                    **r,
                )
            )
    return out


def speed_collection(index: CodeIndex, q_codes, xq, yq, yb, rows, cfg, kth_out: list | None = None) -> list[dict]:
    """Throughput/latency of every index type on the real codes (+ mAP of IVF at each nprobe),
    mih, auto and filtered rows (the k-th neighbour distances appended to ``kth_out``)."""
    k = cfg.speed_k
    xq = xq[: cfg.speed_queries]
    q_codes = q_codes[: cfg.speed_queries]
    bits = index.bits
    db_codes = index.codes
    out = [
        dict(
            kind="flat", bits=bits, **timed_search(lambda c: hamming_search(index, c, k), q_codes, cfg.latency_queries)
        )
    ]
    kk = min(k, index.ntotal)
    flat_d, _ = index.search(q_codes, kk)
    if kth_out is not None:
        kth_out.append(dict(scope="collection", n=index.ntotal, bits=bits, **kth_distances(flat_d)))
    extra, exact = exact_rows(db_codes, q_codes, kk, index.engine.fi, flat_d, cfg.latency_queries)
    out += [dict(r, bits=bits) for r in extra if r["kind"] != "auto"]
    ivf = CodeIndex.from_codes(db_codes, IndexConfig("ivf"), probe=index.probe)
    kq = min(cfg.topk, index.ntotal)
    flat_d, flat_ids = hamming_search(index, q_codes, kq)
    for row in ivf_rows(ivf.engine.fi, flat_ids, flat_d, q_codes, yq[: len(q_codes)], yb, kq, cfg.nprobes):
        r = timed_search(lambda c: hamming_search(ivf, c, k), q_codes, cfg.latency_queries)  # at row's nprobe
        out.append(dict(row, bits=bits, **r))
    out += with_ratios([dict(r, bits=bits) for r in extra if r["kind"] == "auto"])
    unfiltered = {r["kind"]: r for r in out if r["kind"] in exact}
    for r in filtered_rows(exact, q_codes, kk, unfiltered, cfg.latency_queries, cfg.seed + 1):
        out.append(dict(r, bits=bits))

    def reranked(x):
        _, cand = hamming_search(index, index.probe.encode(x), cfg.rerank * k)
        return rerank_float(x, cand, rows, k)

    out.append(
        dict(kind=f"flat+rerank-float-{cfg.rerank}", bits=bits, **timed_search(reranked, xq, cfg.latency_queries))
    )
    return out


def filter_bits(bits: tuple[int, ...]) -> int:
    """The code length whose synthetic collections get filtered rows: 64 bits, else the longest."""
    return 64 if 64 in bits else max(bits)


def float_speed(xb: np.ndarray, xq: np.ndarray, cfg) -> dict:
    import faiss

    fi = faiss.IndexFlatIP(xb.shape[1])
    fi.add(l2_normalize(xb))
    r = timed_search(lambda x: fi.search(l2_normalize(x), cfg.speed_k), xq[: cfg.speed_queries], cfg.latency_queries)
    return dict(kind="float-IndexFlatIP", dim=int(xb.shape[1]), **r)


def speed_synthetic(
    n: int, dim: int, cfg, rng: np.random.Generator, workdir: Path, bar, ivf_out: list, kth_out: list | None = None
) -> list[dict]:
    """Clustered synthetic codes (:mod:`hashindex.measure.synthetic`; queries drawn the same way) at scale
    n: flat, lookup, mih, auto, filtered searches (at the 64-bit codes, or the longest below) and,
    with ``ivf_nlist``, IVF at the nprobe reaching recall@k 0.95 against flat (its sweep appended
    to ``ivf_out``); the k-th neighbour distances appended to ``kth_out``; up to
    ``float_scale``, random float vectors too: float IndexFlatIP, and the Hamming top-(R·k) of
    clustered codes by a scan and by the automatic index, re-ranked by the floats read through a
    memory map."""
    import faiss

    out = []
    nq = min(cfg.speed_queries, 1000)
    for bits in cfg.bits:
        codes = clustered_codes(n + nq, bits, rng)
        codes, qc = codes[:n], codes[n:]
        fi = faiss.IndexBinaryFlat(bits)
        fi.add(codes)
        mem = flat_memory(fi, n, bits, cfg.seed, cfg.rss_min_items)
        flat = dict(
            kind="flat",
            n=n,
            bits=bits,
            **mem,
            **timed_search(lambda c, fi=fi: fi.search(c, cfg.speed_k), qc, min(cfg.latency_queries, 100)),
        )
        out.append(flat)
        n_lat = min(cfg.latency_queries, 100)
        k = min(cfg.speed_k, n)
        flat_d, _ = fi.search(qc, k)
        if kth_out is not None:
            kth_out.append(dict(scope="synthetic", n=n, bits=bits, **kth_distances(flat_d)))
        extra, exact = exact_rows(codes, qc, k, fi, flat_d, n_lat)
        measured = [flat] + [dict(r, n=n, bits=bits) for r in extra if r["kind"] != "auto"]
        out += measured[1:]
        out += with_ratios([dict(r, n=n, bits=bits) for r in extra if r["kind"] == "auto"])
        if bits == filter_bits(cfg.bits):
            unfiltered = {r["kind"]: r for r in measured}
            for r in filtered_rows(exact, qc, k, unfiltered, n_lat, cfg.seed + 1):
                out.append(dict(r, n=n, bits=bits))
        del exact, extra
        if cfg.ivf_nlist and cfg.ivf_nlist <= n:
            flat_d, _ = fi.search(qc, cfg.speed_k)
            del fi  # the flat index's copy of the codes: IVF keeps its own
            iv = ivf_at_recall(codes, qc, flat_d, cfg.ivf_nlist)
            ivf, at = iv.pop("index"), iv["at_target"]
            if at is not None:
                ivf.nprobe = at["nprobe"]
                r = timed_search(lambda c, ivf=ivf: ivf.search(c, cfg.speed_k), qc, min(cfg.latency_queries, 100))
                out.append(dict(kind=f"ivf-nprobe{at['nprobe']}", n=n, bits=bits, recall=at["recall"], **r))
            ivf_out.append(
                dict(
                    iv,
                    n=n,
                    bits=bits,
                    k=cfg.speed_k,
                    flat_qps=flat["qps"],
                    speedup=None if at is None else at["qps"] / flat["qps"],
                )
            )
            del ivf
        else:
            del fi
        del codes
        bar.update(1)
    if n <= cfg.float_scale:
        # Float vectors: IndexFlatIP in RAM, and the same matrix in a contiguous HDF5 file
        # for Hamming top-(R·k) + float re-rank read through a memory map.
        import h5py

        xb = rng.standard_normal((n, dim), dtype=np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        xq = rng.standard_normal((nq, dim), dtype=np.float32)
        fl = float_speed(xb, xq, cfg)
        out.append(dict(fl, n=n, float_bytes_per_item=4 * dim))
        path = workdir / f"synthetic-{n}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("embeddings", data=xb)  # contiguous, uncompressed
        del xb
        # The Hamming step on clustered codes (as learned codes are), by a scan and by the index
        # build would choose for them.
        from hashindex.search.auto import choose

        bits = 64 if 64 in cfg.bits else cfg.bits[-1]
        codes = clustered_codes(n + nq, bits, rng)
        codes, qc = codes[:n], np.ascontiguousarray(codes[n:])
        fi = faiss.IndexBinaryFlat(bits)
        fi.add(codes)
        acfg, tables = choose(codes, IndexConfig("auto"))
        auto = CodeIndex(codes, None, engine_for(acfg, codes, fi, tables=tables), acfg.kind)
        rows = FloatRows(path)
        k, kk = cfg.speed_k, cfg.rerank * cfg.speed_k
        for name, hamming in (("flat", fi.search), ("auto", auto.search)):

            def reranked(i, hamming=hamming):  # i: query positions (codes and floats travel together)
                _, cand = hamming(qc[i], kk)
                return rerank_float(xq[i], cand.astype(np.int64), rows, k)

            r = timed_search(reranked, np.arange(nq), min(cfg.latency_queries, 100))
            chosen = {"chosen": acfg.kind} if name == "auto" else {}
            out.append(dict(kind=f"{name}+rerank-float-{cfg.rerank}", n=n, bits=bits, **chosen, **r))
        rows.close()
        del auto, tables, fi, codes
        path.unlink()
    return out
