"""Range search by multi-index hashing: every code within Hamming distance r of a query. Two codes
within r agree to within floor(r / m) on at least one of the m substrings, so probing each table
to that substring radius meets every one of them (each exactly once, by the order of
:func:`~hashindex.search.kernels.met_first`). The self-join of a collection (every pair within r,
near-duplicates' candidates) asks it for every row, keeping the pairs to later rows.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from hashindex.core.codes import MAX_SUBSTRING_BITS, as_words
from hashindex.search.kernels import code_distance, met_first, probe_args, substring


@njit(cache=True)
def _range_one(tcodes, order, offsets, starts, lengths, tmasks, flips, fstart, qw, radius, after, out_p, out_d):
    """Rows within ``radius`` of ``qw`` (only rows > ``after`` when it is >= 0) into ``out_*``;
    returns how many there are (beyond the arrays' size only counted)."""
    m, cap, count = tcodes.shape[0], out_p.shape[0], 0
    top = radius // m
    for s in range(min(top, lengths.min()) + 1):
        for j in range(m):
            limit = np.uint64(1) << np.uint64(lengths[j])
            qkey = substring(qw, starts[j], lengths[j])
            tc = tcodes[j]
            for f in range(fstart[s], fstart[s + 1]):
                if flips[f] >= limit:
                    continue
                key = np.int64(qkey ^ flips[f])
                lo, hi = np.int64(offsets[j, key]), min(np.int64(offsets[j, key + 1]), tc.shape[1])
                if after >= 0:  # a bucket's rows ascend: skip to those past ``after`` (half a self-join's work)
                    a, b = lo, hi
                    while a < b:
                        mid = (a + b) >> 1
                        if np.int64(order[j, mid]) <= after:
                            a = mid + 1
                        else:
                            b = mid
                    lo = a
                within_radius = 0  # a vectorised count first: most buckets hold no code within the
                for t in range(lo, hi):  # radius (measured 1.2-1.3x faster at 1M x 64, radius 10)
                    within_radius += code_distance(tc, t, qw) <= radius
                if within_radius == 0:
                    continue
                for t in range(lo, hi):
                    p = np.int64(order[j, t])
                    if p <= after or p >= tc.shape[1]:
                        continue
                    d = code_distance(tc, t, qw)
                    if d > radius or not met_first(tc, t, qw, tmasks, s, j):
                        continue
                    if count < cap:
                        out_p[count], out_d[count] = p, d
                    count += 1
    return count


@njit(parallel=True, cache=True)
def _self_join(tcodes, order, offsets, starts, lengths, tmasks, flips, fstart, words, rows, radius, cap):
    n = rows.shape[0]
    counts = np.zeros(n, np.int64)
    out_p, out_d = np.empty((n, cap), np.int64), np.empty((n, cap), np.int32)
    for i in prange(n):
        r = rows[i]
        args = (tcodes, order, offsets, starts, lengths, tmasks, flips, fstart)
        counts[i] = _range_one(*args, words[r], radius, r, out_p[i], out_d[i])
    return counts, out_p, out_d


@njit(parallel=True, cache=True)
def _queries(tcodes, order, offsets, starts, lengths, tmasks, flips, fstart, q, radius, cap):
    n = q.shape[0]
    counts = np.zeros(n, np.int64)
    out_p, out_d = np.empty((n, cap), np.int64), np.empty((n, cap), np.int32)
    for i in prange(n):
        args = (tcodes, order, offsets, starts, lengths, tmasks, flips, fstart)
        counts[i] = _range_one(*args, q[i], radius, -1, out_p[i], out_d[i])
    return counts, out_p, out_d


def range_tables(bits: int, n: int, radius: int) -> int:
    """The number of substrings that makes a range search of ``radius`` cheapest on ``n`` codes,
    by the expected table entries visited: m · Σ_{s <= r/m} C(len, s) · (1 + n / 2^len) (longer
    substrings have fewer entries per bucket, but more buckets within the radius), with
    directories (2^len entries) of at most 4·max(n, 65536)."""
    best, cost_best = 1, math.inf
    for m in range(max(1, -(-bits // MAX_SUBSTRING_BITS)), bits + 1):
        length = -(-bits // m)
        if length > MAX_SUBSTRING_BITS or 2**length > 4 * max(n, 1 << 16):  # directories no larger than the rows
            continue
        top = radius // m
        probes = sum(math.comb(length, s) for s in range(min(top, length) + 1))
        cost = m * probes * (1 + n / 2**length)
        if cost < cost_best:
            best, cost_best = m, cost
    return best


def _run(kernel, tables, first, radius: int, cap: int):
    args = probe_args(tables)
    if radius // tables.m + 1 >= len(args[-1]):  # args[-1]: where each number of flipped bits starts
        raise ValueError(f"radius {radius} needs substring radii beyond those enumerated for {tables.m} tables")
    return kernel(*args, *first, radius, cap)


def _collect(counts, out_p, out_d, redo):
    """Flattened ``(query, row, distance)`` of the kernel's output, ordered by query then row;
    queries whose matches overflowed the arrays are asked again with room for all of them
    (``redo(queries, room)``)."""
    cap = out_p.shape[1]
    over = counts > cap
    keep = np.where(over, 0, counts)
    sel = np.arange(cap)[None, :] < keep[:, None]
    parts = [(np.repeat(np.arange(len(counts)), keep), out_p[sel], out_d[sel])]
    if over.any():
        idx = np.flatnonzero(over)
        c2, p2, d2 = redo(idx, int(counts[idx].max()))
        sel2 = np.arange(p2.shape[1])[None, :] < c2[:, None]
        parts.append((np.repeat(idx, c2), p2[sel2], d2[sel2]))
    q, p, d = (np.concatenate(x) for x in zip(*parts))
    # One int64 key (rows < 2^32: the tables' limit): a stable argsort of it is several times
    # faster than a lexsort of the two arrays on millions of pairs.
    order = np.argsort((q.astype(np.int64) << 32) | p.astype(np.int64), kind="stable")
    return q[order], p[order], d[order]


def self_join(tables, codes: np.ndarray, radius: int, rows: np.ndarray, cap: int = 32):
    """Every pair ``(i, j)``, i in ``rows``, j > i, of codes within ``radius``: arrays
    ``(i, j, distance)``, exact (equal to a brute-force comparison of all pairs)."""
    words = as_words(codes)
    rows = np.asarray(rows, np.int64)

    def run(sub, c):
        return _run(_self_join, tables, (words, rows[sub]), radius, c)

    q, pj, dj = _collect(*run(np.arange(len(rows)), cap), run)
    return rows[q], pj, dj


def within(tables, q_codes: np.ndarray, radius: int, cap: int = 64):
    """Every row within ``radius`` of each query code: ``(query, row, distance)`` arrays."""
    q = as_words(q_codes)

    def run(sub, c):
        return _run(_queries, tables, (q[sub],), radius, c)

    return _collect(*run(np.arange(len(q)), cap), run)
