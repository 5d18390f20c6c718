"""Multi-index hashing tables (Norouzi, Punjani, Fleet, arXiv 1307.2982).

A b-bit code is cut into m disjoint substrings; table j lists every row by the value of its j-th
substring: ``order[j]`` holds the rows sorted by that value (rows of equal value in ascending
order), ``codes[j]`` their codes in that order, word-major (a bucket's codes are read in
sequence, not gathered from all over memory: at 1M codes that is what makes the search faster
than a scan),
and ``offsets[j, v] : offsets[j, v + 1]`` is the slice of rows whose substring is v. Two codes
within distance r agree to within floor(r / m) on at least one substring, which is what the
search (:func:`hashindex.search.kernels.mih_topk`) relies on.

m defaults to substrings of about log2(n) - 7 bits, at least min(10, log2 n)
(:func:`~hashindex.core.codes.default_mih_tables`, measured), so a table's directory (2^len + 1
offsets) is smaller than its row list. Memory per item, beside the code itself: m copies of the
code (padded to 8-byte words) and 4·m bytes of row lists, plus at most 4·m bytes of directory. The tables are
``.npy`` files in the index folder, memory-mapped when loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.codes import MAX_SUBSTRING_BITS, as_words, default_mih_tables
from hashindex.core.errors import InputError

ORDER_FILE, OFFSETS_FILE, CODES_FILE = "mih_order.npy", "mih_offsets.npy", "mih_words.npy"
# Tables written before the codes were stored word-major: (m, n, W), still read (transposed in
# memory when W > 1; the same bytes when W = 1).
ROW_MAJOR_CODES_FILE = "mih_codes.npy"


def layout(bits: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of m substrings covering ``bits`` bits, lengths differing by at most one."""
    if not 1 <= m <= bits or -(-bits // m) > MAX_SUBSTRING_BITS:
        raise InputError(
            f"mih tables must be between {-(-bits // MAX_SUBSTRING_BITS)} and {bits} for {bits}-bit codes, got {m}"
        )
    lengths = np.full(m, bits // m, np.int64)
    lengths[: bits % m] += 1
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths


def substrings(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """Bits ``[start, start + length)`` of every row of ``(n, W)`` uint64 words, as integers
    (the numbering :func:`hashindex.search.kernels.substring` uses for queries)."""
    i, o = divmod(start, 64)
    v = words[:, i] >> np.uint64(o)
    if o + length > 64:
        v = v | (words[:, i + 1] << np.uint64(64 - o))
    return v & np.uint64((1 << length) - 1)


@dataclass
class MIHTables:
    """The m tables of a set of codes (see the module docstring)."""

    starts: np.ndarray  # int64 (m,): first bit of each substring (in the words' bit numbering)
    lengths: np.ndarray  # int64 (m,)
    order: np.ndarray  # uint32 (m, n): rows sorted by substring value
    offsets: np.ndarray  # uint32 (m, 2^max(len) + 1)
    # uint64 (m, W, n): each table's codes in its order, word by word, so that a bucket is W runs
    # of consecutive words (measured: 1.6x faster search at 128 bits than codes row by row)
    codes: np.ndarray

    @property
    def m(self) -> int:
        return len(self.starts)

    @classmethod
    def build(cls, codes: np.ndarray, m: int | None = None) -> MIHTables:
        """Tables over ``codes`` (``(n, bits // 8)`` uint8); ``m`` None: :func:`~hashindex.core.codes.default_mih_tables`."""
        n, bits = len(codes), codes.shape[1] * 8
        if n >= 1 << 32:
            raise InputError(f"mih indexes hold fewer than 2**32 items, got {n}")
        starts, lengths = layout(bits, m or default_mih_tables(bits, n))
        words = as_words(codes)
        size = (1 << int(lengths.max())) + 1
        order = np.empty((len(starts), n), np.uint32)
        offsets = np.zeros((len(starts), size), np.uint32)
        tcodes = np.empty((len(starts), words.shape[1], n), np.uint64)
        for j in range(len(starts)):
            keys = substrings(words, int(starts[j]), int(lengths[j]))
            order[j] = np.argsort(keys, kind="stable")
            tcodes[j] = words[order[j]].T
            offsets[j, 1:] = np.cumsum(np.bincount(keys, minlength=size - 1))
        return cls(starts, lengths, order, offsets, tcodes)

    def save(self, folder: Path) -> list[str]:
        """Write the tables' files into ``folder``; returns their names."""
        for name, arr in ((ORDER_FILE, self.order), (OFFSETS_FILE, self.offsets), (CODES_FILE, self.codes)):
            np.save(folder / name, arr, allow_pickle=False)
        return [ORDER_FILE, OFFSETS_FILE, CODES_FILE]

    @classmethod
    def load(cls, folder: Path, bits: int, n: int, m: int, *, mmap: bool = True) -> MIHTables:
        """The tables saved in ``folder`` (memory-mapped), checked against the layout.

        Raises:
            ValueError: arrays of another shape or type than the layout needs.
        """
        starts, lengths = layout(bits, m)
        mode = "r" if mmap else None
        order = np.load(folder / ORDER_FILE, mmap_mode=mode, allow_pickle=False)
        offsets = np.load(folder / OFFSETS_FILE, mmap_mode=mode, allow_pickle=False)
        nw = -(-bits // 64)
        if (folder / CODES_FILE).exists() or not (folder / ROW_MAJOR_CODES_FILE).exists():
            codes = np.load(folder / CODES_FILE, mmap_mode=mode, allow_pickle=False)
        else:
            codes = np.load(folder / ROW_MAJOR_CODES_FILE, mmap_mode=mode, allow_pickle=False)
            if codes.shape == (m, n, nw):
                codes = codes.reshape(m, 1, n) if nw == 1 else np.ascontiguousarray(codes.transpose(0, 2, 1))
        want = ((m, n), (m, (1 << int(lengths.max())) + 1), (m, nw, n))
        got = (order.shape, offsets.shape, codes.shape)
        if got != want or (order.dtype, offsets.dtype, codes.dtype) != (np.uint32, np.uint32, np.uint64):
            raise ValueError(f"multi-index tables of shapes {got}; the layout needs {want}")
        if int(offsets[:, 0].max()) != 0 or (n and (int(offsets[:, -1].min()) != n or int(offsets[:, -1].max()) != n)):
            raise ValueError("multi-index table directories do not cover every item")
        if (np.diff(offsets.astype(np.int64), axis=1) < 0).any():  # the search trusts slices to be in order
            raise ValueError("multi-index table directories are not in order")
        return cls(starts, lengths, order, offsets, codes)
