"""Binary codes: validation of code lengths, packing and bit statistics.

Codes are ``uint8`` arrays of shape ``(n, bits // 8)`` packed with ``np.packbits(z > 0, axis=1)``
(big bit order), as faiss binary indexes and sentence-transformers' ``ubinary`` expect.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError

MIN_BITS = 8  # the packing helpers accept a single byte (tests use it)
MIN_PROBE_BITS = 16  # the shortest code fit-probe and build make: one range for the CLI, library and README
MAX_BITS = 1024
MAX_LOOKUP_BITS = 16  # the lookup table enumerates every code: 2**16 buckets

# Popcount of every byte value; used by the NumPy reference distance.
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def check_bits(bits: int, minimum: int = MIN_BITS) -> int:
    """Validate a code length.

    Args:
        bits: requested number of bits.
        minimum: the shortest length allowed (``MIN_PROBE_BITS`` for probes and indexes).

    Returns:
        ``bits`` as an int.

    Raises:
        InputError: unless ``bits`` is a multiple of 8 within [minimum, 1024].
    """
    if isinstance(bits, bool) or int(bits) != bits:
        raise InputError(f"bits must be an integer, got {bits!r}")
    bits = int(bits)
    if bits % 8 != 0:
        raise InputError(f"bits must be a multiple of 8 (codes are packed in bytes), got {bits}")
    if not minimum <= bits <= MAX_BITS:
        raise InputError(f"bits must be a multiple of 8 in {minimum}..{MAX_BITS}, got {bits}")
    return bits


def pack(logits: np.ndarray) -> np.ndarray:
    """Binarise logits at 0 and pack them into bytes.

    Args:
        logits: ``(n, bits)`` array; a bit is 1 where the logit is > 0.

    Returns:
        ``(n, bits // 8)`` uint8 C-contiguous array.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise InputError(f"logits must be 2-D (n, bits), got shape {logits.shape}")
    check_bits(logits.shape[1])
    return np.ascontiguousarray(np.packbits(logits > 0, axis=1))


def unpack(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack`: ``(n, bits // 8)`` uint8 → ``(n, bits)`` uint8 of 0/1."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1)


def hamming(xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances between packed codes with a byte popcount table.

    A plain reference implementation: O(nq · nb · bytes) memory in chunks of queries.

    Returns:
        ``(nq, nb)`` int32 distances.
    """
    xq = np.asarray(xq, dtype=np.uint8)
    xb = np.asarray(xb, dtype=np.uint8)
    out = np.empty((xq.shape[0], xb.shape[0]), dtype=np.int32)
    step = max(1, (1 << 24) // max(1, xb.size))
    for s in range(0, xq.shape[0], step):
        x = np.bitwise_xor(xq[s : s + step, None, :], xb[None, :, :])
        out[s : s + step] = _POPCOUNT8[x].sum(axis=2, dtype=np.int32)
    return out


def bit_balance(codes: np.ndarray) -> np.ndarray:
    """Fraction of ones per bit over a set of packed codes (0.5 is perfectly balanced)."""
    return unpack(codes).mean(axis=0)


def as_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes as ``(n, W)`` uint64 words: a view when rows are whole words, else a
    zero-padded copy (XOR and popcount ignore the padding)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    if nbytes % 8 == 0:
        return codes.view(np.uint64).reshape(n, nbytes // 8)
    out = np.zeros((n, -(-nbytes // 8) * 8), np.uint8)
    out[:, :nbytes] = codes
    return out.view(np.uint64)


# A multi-index table's directory holds 2**length offsets: 24 bits is 64 MiB, whatever the
# collection's size.
MAX_SUBSTRING_BITS = 24


def default_mih_tables(bits: int, n: int) -> int:
    """Multi-index hashing's number of substrings, each of about log2(n) - 7 bits, but no shorter
    than min(10, log2 n) (so a small collection's buckets stay sparse: n / 1024 rows each at most)
    and no longer than :data:`MAX_SUBSTRING_BITS`. Shorter than the paper's log2 n: for k = 100
    on clustered codes this was the fastest count, or within 1.25x of it, from 100k to 10M items
    at 64 and 128 bits (``benchmarks/mih_tables.py``, BENCHMARKS.md): the k-th neighbour is far
    enough that more, shorter tables probe fewer codes."""
    import math

    return int(min(bits, math.ceil(bits / mih_substring_bits(n))))


def mih_substring_bits(n: int, longer: float = 0.0) -> float:
    """The substring length :func:`default_mih_tables` aims at for ``n`` codes, plus ``longer``
    bits (at most :data:`MAX_SUBSTRING_BITS`)."""
    import math

    log2n = math.log2(max(2, n))
    return min(float(MAX_SUBSTRING_BITS), max(log2n - 7, min(10.0, log2n)) + longer)
