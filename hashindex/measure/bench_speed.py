"""The bench's speed sections: queries per second and latency of every index kind on the
collection's own codes and on clustered synthetic collections, beside float ``IndexFlatIP``,
all timed side by side in one process."""

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
from hashindex.search.engines import CodeIndex
from hashindex.search.ranking import hamming_search
from hashindex.search.rerank import FloatRows, rerank_float

logger = logging.getLogger(__name__)


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
    return {"qps": qps, "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99))}


def speed_collection(index: CodeIndex, q_codes, xq, yq, yb, rows, cfg) -> list[dict]:
    """Throughput/latency of every index type on the real codes (+ mAP of IVF at each nprobe)."""
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
    ivf = CodeIndex.from_codes(db_codes, IndexConfig("ivf"), probe=index.probe)
    kq = min(cfg.topk, index.ntotal)
    flat_d, flat_ids = hamming_search(index, q_codes, kq)
    for row in ivf_rows(ivf.engine.fi, flat_ids, flat_d, q_codes, yq[: len(q_codes)], yb, kq, cfg.nprobes):
        r = timed_search(lambda c: hamming_search(ivf, c, k), q_codes, cfg.latency_queries)  # at row's nprobe
        out.append(dict(row, bits=bits, **r))
    if bits <= MAX_LOOKUP_BITS:
        lk = CodeIndex.from_codes(db_codes, IndexConfig("lookup"))
        out.append(
            dict(kind="lookup", bits=bits, **timed_search(lambda c: lk.search(c, k), q_codes, cfg.latency_queries))
        )

    def reranked(x):
        _, cand = hamming_search(index, index.probe.encode(x), cfg.rerank * k)
        return rerank_float(x, cand, rows, k)

    out.append(
        dict(kind=f"flat+rerank-float-{cfg.rerank}", bits=bits, **timed_search(reranked, xq, cfg.latency_queries))
    )
    return out


def float_speed(xb: np.ndarray, xq: np.ndarray, cfg) -> dict:
    import faiss

    fi = faiss.IndexFlatIP(xb.shape[1])
    fi.add(l2_normalize(xb))
    r = timed_search(lambda x: fi.search(l2_normalize(x), cfg.speed_k), xq[: cfg.speed_queries], cfg.latency_queries)
    return dict(kind="float-IndexFlatIP", dim=int(xb.shape[1]), **r)


def speed_synthetic(n: int, dim: int, cfg, rng: np.random.Generator, workdir: Path, bar, ivf_out: list) -> list[dict]:
    """Clustered synthetic codes (:mod:`hashindex.measure.synthetic`; queries drawn the same way) at scale
    n: flat, lookup and, with ``ivf_nlist``, IVF at the nprobe reaching recall@k 0.95 against flat
    (its sweep appended to ``ivf_out``); up to ``float_scale``, random float vectors too."""
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
            **timed_search(lambda c: fi.search(c, cfg.speed_k), qc, min(cfg.latency_queries, 100)),
        )
        out.append(flat)
        if bits <= MAX_LOOKUP_BITS:
            lk = CodeIndex.from_codes(codes, IndexConfig("lookup"))
            r = timed_search(lambda c: lk.search(c, cfg.speed_k), qc, min(cfg.latency_queries, 100))
            out.append(dict(kind="lookup", n=n, bits=bits, **r))
            del lk
        if cfg.ivf_nlist and cfg.ivf_nlist <= n:
            flat_d, _ = fi.search(qc, cfg.speed_k)
            del fi  # the flat index's copy of the codes: IVF keeps its own
            iv = ivf_at_recall(codes, qc, flat_d, cfg.ivf_nlist)
            ivf, at = iv.pop("index"), iv["at_target"]
            if at is not None:
                ivf.nprobe = at["nprobe"]
                r = timed_search(lambda c: ivf.search(c, cfg.speed_k), qc, min(cfg.latency_queries, 100))
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
        bits = 64 if 64 in cfg.bits else cfg.bits[-1]
        codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
        qc = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
        fi = faiss.IndexBinaryFlat(bits)
        fi.add(codes)
        rows = FloatRows(path)
        k, kk = cfg.speed_k, cfg.rerank * cfg.speed_k

        def reranked(i):  # i: query positions (codes and floats travel together)
            _, cand = fi.search(qc[i], kk)
            return rerank_float(xq[i], cand.astype(np.int64), rows, k)

        r = timed_search(reranked, np.arange(nq), min(cfg.latency_queries, 100))
        out.append(dict(kind=f"flat+rerank-float-{cfg.rerank}", n=n, bits=bits, **r))
        rows.close()
        path.unlink()
    return out
