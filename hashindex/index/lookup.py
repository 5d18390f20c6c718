"""Exact Hamming top-k for short codes by hash-table lookup instead of a scan.

At 16 bits only 65,536 codes and 17 distances exist: a flat scan with heap selection spends its
time on selection. Here the database is sorted by code once; a query visits the buckets of all
codes at radius 0, 1, 2, ... until k items are found, and the items of the last radius are
ordered by id. Results equal a flat scan with ties by id.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from hashindex.core.errors import InputError

MAX_LOOKUP_BITS = 16


class HammingLookup:
    """Bucket table over ``(n, bits // 8)`` packed codes, ``bits <= 16``.

    Args:
        codes: packed database codes; item ids are row positions.
    """

    def __init__(self, codes: np.ndarray):
        codes = np.asarray(codes, dtype=np.uint8)
        self.bits = codes.shape[1] * 8
        if self.bits > MAX_LOOKUP_BITS:
            raise InputError(f"lookup tables serve codes of at most {MAX_LOOKUP_BITS} bits, not {self.bits}")
        keys = self._keys(codes)
        self.ntotal = len(keys)
        # Ids sorted by (code, id): each bucket is a slice, already in id order.
        self.ids = np.argsort(keys, kind="stable").astype(np.int64)
        self.starts = np.searchsorted(keys[self.ids], np.arange(2**self.bits + 1)).astype(np.int64)
        # XOR masks of every radius, each radius's masks contiguous.
        self.masks = [
            np.array([sum(1 << b for b in c) for c in combinations(range(self.bits), r)], dtype=np.int64)
            for r in range(self.bits + 1)
        ]

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        keys = np.zeros(len(codes), dtype=np.int64)
        for j in range(codes.shape[1]):
            keys = (keys << 8) | codes[:, j]
        return keys

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by Hamming distance, ties by id; ``k`` is capped at ``ntotal``.

        Returns:
            ``(D, I)`` int32 distances and int64 ids, shape ``(nq, min(k, ntotal))``.
        """
        k = min(k, self.ntotal)
        qkeys = self._keys(np.asarray(codes, dtype=np.uint8))
        d_out = np.empty((len(qkeys), k), dtype=np.int32)
        i_out = np.empty((len(qkeys), k), dtype=np.int64)
        for row, q in enumerate(qkeys):
            found, filled = [], 0
            for r, masks in enumerate(self.masks):
                nb = q ^ masks
                lo, hi = self.starts[nb], self.starts[nb + 1]
                cnt = int((hi - lo).sum())
                if cnt == 0:
                    continue
                ids = np.concatenate([self.ids[a:b] for a, b in zip(lo[hi > lo], hi[hi > lo])])
                if filled + cnt >= k:
                    ids = np.sort(ids)[: k - filled]  # the last radius: lowest ids first
                    d_out[row, filled:] = r
                    i_out[row, filled:] = ids
                    filled = k
                    break
                d_out[row, filled : filled + cnt] = r
                i_out[row, filled : filled + cnt] = np.sort(ids)
                filled += cnt
        return d_out, i_out
