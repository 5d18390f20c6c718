"""The automatic index choice (``build --index auto``, the default).

Exact kinds are preferred: ``lookup`` for codes of at most 16 bits (one table: every code is its
own key, never slower than a scan), otherwise ``mih`` or ``flat``, whichever answers a sample of
the collection's own codes faster (k = 100, one query at a time, one thread): multi-index
hashing wins when the collection's neighbours are close in Hamming distance, a scan when they are
not. Multi-index hashing is timed at each of :func:`table_counts` (how long a substring pays
depends on how close the neighbours are), and so is a ``mih`` build that leaves the count open. IVF is chosen only when asked for (``approximate``) or when no exact kind meets the latency
target given (``latency_ms``). The choice and its reason (the timings and the median distance of
the 100th neighbour) are recorded in the manifest.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from hashindex.core.codes import MAX_LOOKUP_BITS, default_mih_tables, mih_substring_bits
from hashindex.core.config import IndexConfig

logger = logging.getLogger(__name__)

SAMPLE_QUERIES = 64
SMALL = 4096  # below this many codes any kind answers in microseconds: a scan, without timing
K = 100
TIMED_TABLES_MAX_N = 4_000_000  # a second set of tables to time takes about a second per million codes


def _per_query_ms(search, queries: np.ndarray) -> float:
    """Median milliseconds of one query at a time (after one untimed call: compilation, caches)."""
    search(queries[:1])
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def table_counts(bits: int, n: int) -> list[int]:
    """Numbers of mih tables worth timing on a collection: the default (substrings of about
    log2(n) - 7 bits, tuned on clustered synthetic codes whose neighbours are far) and the count
    with substrings 3 bits longer, which suits collections whose neighbours are close (60k real
    CroVCA codes of 64 and 128 bits: 1.2x faster at 13 bits than at 10; BENCHMARKS.md)."""
    longer = min(bits, math.ceil(bits / mih_substring_bits(n, longer=3)))
    return sorted({default_mih_tables(bits, n), longer})


def _sample(codes: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """The collection's own codes the timings query, and k."""
    n = len(codes)
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(codes[np.sort(rng.choice(n, min(SAMPLE_QUERIES, n), replace=False))]), min(K, n)


def _fastest_mih(codes: np.ndarray, queries: np.ndarray, k: int, counts: list[int]):
    """``(ms, tables count, tables, timings as text)`` of the fastest count (ties: the first)."""
    from hashindex.index.mih import MIHTables
    from hashindex.search.engines import CodeIndex, MIHEngine

    best, timings = None, {}
    for m in counts:
        tables = MIHTables.build(codes, m)
        ix = CodeIndex(codes, None, MIHEngine(codes, tables), "mih")
        t = _single_thread(lambda ix=ix: _per_query_ms(lambda q: ix.search(q, k), queries))
        timings[m] = t
        if best is None or t < best[0]:
            best = (t, m, tables)
        del tables, ix  # one set of tables held at a time besides the best
    return (*best, ", ".join(f"{c} tables {t:.3f} ms" for c, t in timings.items()))


def choose(codes: np.ndarray, config: IndexConfig, *, seed: int = 0) -> tuple[IndexConfig, object]:
    """The resolved config ``auto`` stands for, with its reason; a ``mih`` config without a number
    of tables gets the fastest of :func:`table_counts` on the collection's own codes (up to
    :data:`TIMED_TABLES_MAX_N` codes; beyond, the default count); other kinds resolve as given.

    Returns:
        ``(config, tables)``: the resolved config, and the multi-index tables built to time them
        when mih is chosen (None otherwise), so the build does not make them twice.
    """
    import faiss

    from hashindex.search.engines import CodeIndex

    n, bits = len(codes), codes.shape[1] * 8
    if config.kind == "mih" and config.tables is None and SMALL <= n <= TIMED_TABLES_MAX_N:
        queries, k = _sample(codes, seed)
        _, m, tables, tried = _fastest_mih(codes, queries, k, table_counts(bits, n))
        why = f"mih: {m} tables, the fastest on one query at a time of {len(queries)} of the collection's own codes ({tried})"
        return IndexConfig("mih", tables=m, reason=why).resolved(n, bits), tables
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
    queries, k = _sample(codes, seed)
    if config.tables is not None:
        counts = [config.tables]
    elif n <= TIMED_TABLES_MAX_N:
        counts = table_counts(bits, n)
    else:
        counts = [default_mih_tables(bits, n)]
    t_mih, m, tables, tried = _fastest_mih(codes, queries, k, counts)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        flat = CodeIndex.from_codes(codes, IndexConfig("flat"))
        t_flat = _per_query_ms(lambda q: flat.search(q, k), queries)
        kth = float(np.median(flat.search(queries, k)[0][:, -1]))
    finally:
        faiss.omp_set_num_threads(threads)
    why = (
        f"auto: one query (k={k}, one thread, {len(queries)} of the collection's own codes) took {t_mih:.3f} ms by "
        f"mih ({tried}), {t_flat:.3f} ms by flat; median {k}th-neighbour distance {kth:g} of {bits} bits"
    )
    best, t_best = ("mih", t_mih) if t_mih < t_flat else ("flat", t_flat)
    if config.latency_ms is not None and t_best > config.latency_ms:
        why += f"; neither meets the {config.latency_ms:g} ms target: approximate IVF"
        return IndexConfig("ivf", config.nlist, config.nprobe, reason=why).resolved(n, bits), None
    logger.info("%s -> %s", why, best)
    if best == "mih":
        return IndexConfig("mih", tables=m, reason=why).resolved(n, bits), tables
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
