"""The automatic index choice (``build --index auto``, the default).

Exact kinds are preferred: ``lookup`` for codes of at most 16 bits (one table: every code is its
own key, never slower than a scan), otherwise ``mih`` or ``flat``, whichever answers a sample of
the collection's own codes faster (k = 100, one query at a time, one thread): multi-index
hashing wins when the collection's neighbours are close in Hamming distance, a scan when they are
not. IVF is chosen only when asked for (``approximate``) or when no exact kind meets the latency
target given (``latency_ms``). The choice and its reason (the timings and the median distance of
the 100th neighbour) are recorded in the manifest.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from hashindex.core.codes import MAX_LOOKUP_BITS
from hashindex.core.config import IndexConfig

logger = logging.getLogger(__name__)

SAMPLE_QUERIES = 64
SMALL = 4096  # below this many codes any kind answers in microseconds: a scan, without timing
K = 100


def _per_query_ms(search, queries: np.ndarray) -> float:
    """Median milliseconds of one query at a time (after one untimed call: compilation, caches)."""
    search(queries[:1])
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def choose(codes: np.ndarray, config: IndexConfig, *, seed: int = 0) -> tuple[IndexConfig, object]:
    """The resolved config ``auto`` stands for, with its reason; other kinds resolve as given.

    Returns:
        ``(config, tables)``: the resolved config, and the multi-index tables built to time them
        when mih is chosen (None otherwise), so the build does not make them twice.
    """
    import faiss

    from hashindex.index.mih import MIHTables
    from hashindex.search.engines import CodeIndex, MIHEngine

    n, bits = len(codes), codes.shape[1] * 8
    if config.kind != "auto":
        return config.resolved(n, bits), None
    if config.approximate:
        return IndexConfig("ivf", config.nlist, config.nprobe, reason="auto: approximate search asked for").resolved(
            n, bits
        ), None
    if bits <= MAX_LOOKUP_BITS:
        return IndexConfig("lookup", reason=f"auto: {bits}-bit codes, an exact table lookup").resolved(n, bits), None
    if n < SMALL:
        return IndexConfig("flat", reason=f"auto: {n} items, a scan takes microseconds").resolved(n, bits), None
    rng = np.random.default_rng(seed)
    queries = np.ascontiguousarray(codes[np.sort(rng.choice(n, min(SAMPLE_QUERIES, n), replace=False))])
    k = min(K, n)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        flat = CodeIndex.from_codes(codes, IndexConfig("flat"))
        t_flat = _per_query_ms(lambda q: flat.search(q, k), queries)
        kth = float(np.median(flat.search(queries, k)[0][:, -1]))
        mih_cfg = IndexConfig("mih", tables=config.tables).resolved(n, bits)
        tables = MIHTables.build(codes, mih_cfg.tables)
        mih = CodeIndex(codes, None, MIHEngine(codes, tables), "mih")
        t_mih = _single_thread(lambda: _per_query_ms(lambda q: mih.search(q, k), queries))
    finally:
        faiss.omp_set_num_threads(threads)
    why = (
        f"auto: one query (k={k}, one thread, {len(queries)} of the collection's own codes) took {t_mih:.3f} ms by "
        f"mih ({mih_cfg.tables} tables), {t_flat:.3f} ms by flat; median {k}th-neighbour distance {kth:g} of {bits} bits"
    )
    best, t_best = ("mih", t_mih) if t_mih < t_flat else ("flat", t_flat)
    if config.latency_ms is not None and t_best > config.latency_ms:
        why += f"; neither meets the {config.latency_ms:g} ms target: approximate IVF"
        return IndexConfig("ivf", config.nlist, config.nprobe, reason=why).resolved(n, bits), None
    logger.info("%s -> %s", why, best)
    if best == "mih":
        return IndexConfig("mih", tables=mih_cfg.tables, reason=why).resolved(n, bits), tables
    return IndexConfig("flat", reason=why).resolved(n, bits), None


def _single_thread(fn):
    """Run ``fn`` with the compiled kernels on one thread (as the faiss scan it is compared with)."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn()
    finally:
        numba.set_num_threads(threads)
