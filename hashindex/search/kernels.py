"""Compiled Hamming kernels (numba): filtered scans, multi-index hashing, range self-joins.

Codes are handled as 64-bit words (``(n, W)`` uint64: the packed bytes viewed, or zero-padded to
whole words; XOR and popcount do not care how bits are numbered, and the multi-index tables
number them the same way for queries and database). Every kernel returns rows ordered by
(distance, row); rows are kept in id order, so ties go by id as everywhere.

Top-k selection keeps a histogram of the distances met so far and the k-th smallest ``kth``: a
candidate farther than ``kth`` can never enter the result, which is the rows at distance below
``kth`` plus the lowest rows at ``kth``. Codes of one word (up to 64 bits, the common case) take
loops of their own: the compiler keeps them in registers (measured 1.6x faster than the
general loop over words).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

from hashindex.core.codes import as_words

_M1, _M2, _M4, _H01 = (
    np.uint64(v) for v in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101)
)
BLOCK = 1024  # rows whose distances a scan computes in one tight loop


@njit(inline="always", cache=True)
def popcount(x):
    """Set bits of a uint64 (the compiler turns this into one instruction where there is one)."""
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


@njit(inline="always", cache=True)
def substring(w, start, length):
    """Bits ``[start, start + length)`` of a code's words as an integer (length <= 32)."""
    i, o = start // 64, start % 64
    v = w[i] >> np.uint64(o)
    if o + length > 64:
        v |= w[i + 1] << np.uint64(64 - o)
    return v & ((np.uint64(1) << np.uint64(length)) - np.uint64(1))


@njit(cache=True)
def _select(cand_d, cand_p, n, kth, k, out_d, out_p):
    """The k entries with the smallest (distance, row) among the first n candidates."""
    m = 0
    for i in range(n):
        if cand_d[i] <= kth:
            cand_d[m], cand_p[m] = cand_d[i], cand_p[i]
            m += 1
    order = np.argsort(cand_d[:m].astype(np.int64) * np.int64(1 << 40) + cand_p[:m])
    for r in range(min(k, m)):
        out_d[r], out_p[r] = cand_d[order[r]], cand_p[order[r]]


@njit(inline="always", cache=True)
def _offer(d, p, k, kth, within, found, hist, cand_d, cand_p):
    """Keep candidate (d, p), d <= kth (the buffers hold every candidate a query can offer);
    then ``kth`` moves down while k candidates are still within it."""
    cand_d[found], cand_p[found] = d, p
    hist[d] += 1
    within += 1
    while kth > 0 and within - hist[kth] >= k:
        within -= hist[kth]
        kth -= 1
    return found + 1, kth, within


@njit(cache=True)
def _scan(words, qw, k, mask, rows, use_mask, use_rows, out_d, out_p):
    nw = words.shape[1]
    n = rows.shape[0] if use_rows else words.shape[0]
    hist = np.zeros(nw * 64 + 1, np.int64)
    # Sized for the worst case, never touched beyond what is used: untouched pages cost nothing.
    cand_d, cand_p = np.empty(n, np.int32), np.empty(n, np.int64)
    kth, within, found = nw * 64, 0, 0
    dist = np.empty(BLOCK, np.int32)
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        if nw == 1 and not use_rows:  # one tight, vectorisable loop
            q0 = qw[0]
            for i in range(lo, hi):
                dist[i - lo] = popcount(words[i, 0] ^ q0)
        else:
            for i in range(lo, hi):
                p = rows[i] if use_rows else i
                d = 0
                for w in range(nw):
                    d += popcount(words[p, w] ^ qw[w])
                dist[i - lo] = d
        for i in range(lo, hi):
            d = dist[i - lo]
            if d > kth:
                continue
            p = rows[i] if use_rows else i
            if use_mask and not mask[p]:
                continue
            found, kth, within = _offer(d, p, k, kth, within, found, hist, cand_d, cand_p)
    _select(cand_d, cand_p, found, kth, k, out_d, out_p)


@njit(parallel=True, cache=True)
def _scan_all(words, q, k, mask, rows, use_mask, use_rows):
    out_d, out_p = np.zeros((q.shape[0], k), np.int32), np.zeros((q.shape[0], k), np.int64)
    for r in prange(q.shape[0]):
        _scan(words, q[r], k, mask, rows, use_mask, use_rows, out_d[r], out_p[r])
    return out_d, out_p


def scan_topk(codes: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None, rows=None):
    """Exact top-k by a scan of ``codes`` (only ``rows``, sorted, when given; only rows where
    ``mask`` is true, when given): ``(D int32, rows int64)`` ordered by (distance, row).
    ``k`` must not exceed the rows that qualify."""
    words, qw = as_words(codes), as_words(q)
    use_mask, use_rows = mask is not None, rows is not None
    mask = np.zeros(1, np.bool_) if mask is None else np.asarray(mask, np.bool_)
    rows = np.zeros(1, np.int64) if rows is None else np.asarray(rows, np.int64)
    return _scan_all(words, qw, int(k), mask, rows, use_mask, use_rows)


@njit(inline="always", cache=True)
def met_first(tc, t, qw, tmasks, s, j):
    """Whether code ``t`` of ``tc`` (word-major), met in table ``j`` at substring radius ``s``, is met there
    first: probing goes radius-major, table-minor, so a code met earlier has a table before ``j``
    within ``s`` of the query or one after it within ``s - 1`` (range searches that leave the last
    tables out at the top radius still probe every such table: hashindex.search.ranges)."""
    nw = qw.shape[0]
    for u in range(tmasks.shape[0]):
        if u == j:
            continue
        if nw == 1:
            sd = popcount((tc[0, t] ^ qw[0]) & tmasks[u, 0])
        else:
            sd = 0
            for w in range(nw):
                sd += popcount((tc[w, t] ^ qw[w]) & tmasks[u, w])
        if sd < s or (sd == s and u < j):
            return False
    return True


@njit(inline="always", cache=True)
def code_distance(tc, t, qw):
    """Hamming distance of code ``t`` of a table's word-major codes ``tc`` (``(W, n)``) to the
    query words (one or two words: no loop, which lets the compiler vectorise loops over t)."""
    if qw.shape[0] == 1:
        return popcount(tc[0, t] ^ qw[0])
    if qw.shape[0] == 2:
        return popcount(tc[0, t] ^ qw[0]) + popcount(tc[1, t] ^ qw[1])
    d = 0
    for w in range(qw.shape[0]):
        d += popcount(tc[w, t] ^ qw[w])
    return d


@njit(cache=True)
def _mih_one(tcodes, order, offsets, starts, lengths, tmasks, flips, fstart, qw, k, mask, use_mask, out_d, out_p):
    """One query by multi-index hashing (Norouzi et al.): radii grow table by table until the
    k-th distance found is below what any code not met yet can have. Each table keeps a copy of
    the codes in its own order (``tcodes``), so a bucket's codes are read in sequence. Returns
    False when probing would cost more than a scan (the caller then scans)."""
    m, n = tcodes.shape[0], tcodes.shape[2]
    hist = np.zeros(tcodes.shape[1] * 64 + 1, np.int64)
    cand_d, cand_p = np.empty(n, np.int32), np.empty(n, np.int64)  # untouched pages cost nothing
    near = np.empty(n, np.int64)  # a bucket's positions within kth
    found, kth, within = 0, hist.shape[0] - 1, 0  # candidates found, k-th distance, candidates within it
    work = 0
    for s in range(lengths.min() + 1):
        if s + 1 >= fstart.shape[0]:  # beyond the radii enumerated in advance: scan instead
            return False
        for j in range(m):
            limit = np.uint64(1) << np.uint64(lengths[j])
            qkey = substring(qw, starts[j], lengths[j])
            tc, oj = tcodes[j], order[j]
            for f in range(fstart[s], fstart[s + 1]):
                if flips[f] >= limit:  # a shorter table: keys of its own length only
                    continue
                key = np.int64(qkey ^ flips[f])
                lo, hi = np.int64(offsets[j, key]), min(np.int64(offsets[j, key + 1]), n)  # n: a damaged
                work += 1 + hi - lo  # table gives wrong answers, never a crash
                # Most buckets hold no code within kth; this counting loop (vectorised) says so at
                # a fraction of the cost of the loop below, which keeps kth current (measured: half
                # the time per query at 1M x 64 bits; written out here, as a function it was not).
                within_kth = 0
                for t in range(lo, hi):
                    within_kth += code_distance(tc, t, qw) <= kth
                if within_kth == 0:
                    continue
                # The positions within kth, gathered without a branch, then only those examined
                # (measured 1.1x faster per query at 1M x 64 than testing every code of the bucket).
                c = 0
                for t in range(lo, hi):
                    near[c] = t
                    c += code_distance(tc, t, qw) <= kth
                for u in range(c):
                    t = near[u]
                    d = code_distance(tc, t, qw)
                    if d > kth or not met_first(tc, t, qw, tmasks, s, j):  # met in an earlier bucket
                        continue
                    p = np.int64(oj[t])
                    if p >= n or (use_mask and not mask[p]):
                        continue
                    found, kth, within = _offer(d, p, k, kth, within, found, hist, cand_d, cand_p)
            if work > n:
                return False
            # Codes not met yet have substring distance > s in tables 0..j and >= s after.
            if within >= k and kth <= m * s + j:
                _select(cand_d, cand_p, found, kth, k, out_d, out_p)
                return True
    # Every table is shorter than the next radius: all codes were met.
    _select(cand_d, cand_p, found, kth, k, out_d, out_p)
    return True


@njit(parallel=True, cache=True)
def _mih_all(tcodes, order, offsets, starts, lengths, tmasks, flips, fstart, q, k, mask, use_mask):
    nq = q.shape[0]
    out_d, out_p = np.zeros((nq, k), np.int32), np.zeros((nq, k), np.int64)
    done = np.zeros(nq, np.bool_)
    for r in prange(nq):
        args = (tcodes, order, offsets, starts, lengths, tmasks, flips, fstart)
        done[r] = _mih_one(*args, q[r], k, mask, use_mask, out_d[r], out_p[r])
    return out_d, out_p, done


@njit(cache=True)
def _mih_single(tcodes, order, offsets, starts, lengths, tmasks, flips, fstart, q, k, mask, use_mask):
    """One query without the parallel loop's start-up (a few microseconds of a ~0.1 ms query)."""
    out_d, out_p = np.zeros((1, k), np.int32), np.zeros((1, k), np.int64)
    done = np.zeros(1, np.bool_)
    args = (tcodes, order, offsets, starts, lengths, tmasks, flips, fstart)
    done[0] = _mih_one(*args, q[0], k, mask, use_mask, out_d[0], out_p[0])
    return out_d, out_p, done


NO_MASK = np.zeros(1, np.bool_)


def probe_args(tables) -> tuple:
    """The kernels' view of ``tables``: its arrays, substring masks and flip masks, made once per
    tables object (a single query takes ~0.1 ms; making these took several microseconds)."""
    args = tables.__dict__.get("_probe_args")
    if args is None:
        flips, fstart = flip_masks(int(tables.lengths.max()))
        tmasks = substring_masks(tuple(tables.starts), tuple(tables.lengths), tables.codes.shape[1])
        args = (tables.codes, tables.order, tables.offsets, tables.starts, tables.lengths, tmasks, flips, fstart)
        tables.__dict__["_probe_args"] = args
    return args


def mih_topk(tables, codes: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None):
    """Exact top-k by multi-index hashing over ``tables`` (:class:`~hashindex.index.mih.MIHTables`
    of ``codes``): ``(D int32, rows int64)``, equal to :func:`scan_topk`'s. A query whose
    probing would visit more entries than the index holds is answered by a scan instead.
    ``k`` must not exceed the rows that qualify."""
    use_mask = mask is not None
    mask_arr = NO_MASK if mask is None else np.asarray(mask, np.bool_)
    qw = as_words(q)
    kernel = _mih_single if len(qw) == 1 else _mih_all
    d, p, done = kernel(*probe_args(tables), qw, int(k), mask_arr, use_mask)
    if not done.all():
        rest = np.flatnonzero(~done)
        d[rest], p[rest] = scan_topk(codes, q[rest], k, mask)
    return d, p


MAX_FLIPS = 1 << 20  # masks enumerated in advance (8 MB); radii beyond them fall back to a scan


@lru_cache(maxsize=8)
def flip_masks(length: int) -> tuple[np.ndarray, np.ndarray]:
    """XOR masks of ``length`` bits by number of set bits: ``masks[start[s]:start[s + 1]]`` are
    those with s bits, for every s whose masks fit in :data:`MAX_FLIPS` in all."""
    from math import comb

    top = 0
    while top < length and sum(comb(length, s) for s in range(top + 2)) <= MAX_FLIPS:
        top += 1
    parts = [_combinations(length, s, comb(length, s)) for s in range(top + 1)]
    start = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return np.concatenate(parts).astype(np.uint64), start


@njit(cache=True)
def _combinations(length, s, count):
    """The ``count`` = C(length, s) integers of ``length`` bits with ``s`` set, ascending (Gosper's hack)."""
    out = np.empty(count, np.uint64)
    v = (np.uint64(1) << np.uint64(s)) - np.uint64(1)
    for i in range(out.shape[0]):
        out[i] = v
        if s == 0:
            break
        c = v & (~v + np.uint64(1))
        r = v + c
        v = (((r ^ v) >> np.uint64(2)) // c) | r
    return out


@lru_cache(maxsize=32)
def substring_masks(starts: tuple, lengths: tuple, nw: int) -> np.ndarray:
    """``(m, W)`` uint64: the bits of each substring, in the words' numbering."""
    out = np.zeros((len(starts), nw), np.uint64)
    for j, (a, n) in enumerate(zip(starts, lengths)):
        for b in range(int(a), int(a + n)):
            out[j, b // 64] |= np.uint64(1) << np.uint64(b % 64)
    return out
