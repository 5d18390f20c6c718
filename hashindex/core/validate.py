"""Checks at the library's boundary: k, packed codes and float embeddings, each validated once.

Every entry point that takes user arrays (search, re-ranking, a probe's encoder, the float
reference) goes through these, so a bad value gets the same clear ``InputError`` everywhere.
"""

from __future__ import annotations

import numpy as np

from hashindex.core.errors import InputError, MismatchError


def check_k(k: int) -> int:
    """Raises InputError unless ``k`` is a positive integer (an integral float such as 5.0 is
    accepted; bools, NaN, inf, strings and None are not)."""
    ok = isinstance(k, (int, float, np.integer, np.floating)) and not isinstance(k, (bool, np.bool_))
    if not ok or not float(k).is_integer() or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Validate packed query codes: ``uint8``, 2-D, ``bits // 8`` bytes wide.

    Returns:
        The codes as a C-contiguous array.

    Raises:
        InputError: wrong dtype, dimensionality or width.
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise InputError(f"codes must be uint8 (packed bits), got {codes.dtype}")
    if codes.ndim != 2:
        raise InputError(f"codes must be 2-D (n, {bits // 8}), got shape {codes.shape}")
    if codes.shape[1] * 8 != bits:
        raise InputError(f"codes have {codes.shape[1] * 8} bits, the index has {bits}")
    return np.ascontiguousarray(codes)


def check_embeddings(x: np.ndarray, dim: int, what: str = "embeddings") -> np.ndarray:
    """Validate float embeddings: a real floating dtype, 2-D ``(n, dim)``, every value finite
    (also after conversion to float32).

    Returns:
        The embeddings as a C-contiguous float32 array.

    Raises:
        InputError: wrong dtype, dimensionality or non-finite values.
        MismatchError: another width than ``dim``.
    """
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise InputError(f"{what} must be a 2-D float array: {e}") from None
    if x.dtype.kind != "f":
        raise InputError(f"{what} must be floating point (float16/32/64), got {x.dtype}")
    if x.ndim != 2:
        raise InputError(f"{what} must be 2-D (n, {dim}), got shape {x.shape}: pass one query as x[None]")
    if x.shape[1] != dim:
        raise MismatchError(
            f"{what} are {x.shape[1]}-d, but the probe expects {dim}-d embeddings "
            "(fit the probe on embeddings from the same backbone)"
        )
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or inf values (or values beyond the float32 range)")
    return x
