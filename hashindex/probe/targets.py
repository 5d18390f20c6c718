"""Supervised CroVCA targets: class codes from a codebook with a guaranteed minimum Hamming distance.

The paper's targets are the signs of class prototypes (mean logits of a class in the batch). Two
classes whose prototypes agree on every bit's sign share a code, and nothing in the loss pulls
them apart again: on Fashion-MNIST that merge happened at some seeds and not others. Here each
class instead gets a fixed code from a codebook whose rows are at least ``min_distance`` apart
(Hadamard rows where the code length is a power of two, as CSQ's hash centres; otherwise random
balanced codes rejected until far apart). The codebook is then *aligned* to the network's initial
class prototypes by the operations that keep every pairwise distance (which class gets which row,
which bit plays which column, and flipping a bit for all classes), so the targets ask as little as
possible of the network while keeping the guarantee.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hashindex.core.config import TARGETS, TargetKind  # noqa: F401 (re-exported: the choices live in config)
from hashindex.core.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Codebook:
    """``codes``: ``(C, B)`` uint8 0/1 class codes; ``min_distance``: their smallest pairwise distance."""

    codes: np.ndarray
    min_distance: int

    def to_meta(self) -> dict:
        """JSON-friendly record for the probe's meta (codes as hex strings of the packed bits)."""
        return {"min_distance": self.min_distance, "codes": [bytes(r).hex() for r in np.packbits(self.codes, axis=1)]}


def hadamard(n: int) -> np.ndarray:
    """Sylvester Hadamard matrix of order ``n`` (a power of two), entries ±1."""
    h = np.ones((1, 1), dtype=np.int8)
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


def min_distance(codes: np.ndarray) -> int:
    """Smallest Hamming distance between two distinct rows of a 0/1 matrix (bits + 1 for one row)."""
    c = np.asarray(codes, dtype=np.int64)
    if len(c) < 2:
        return c.shape[1] + 1
    d = (c[:, None, :] != c[None, :, :]).sum(2)
    np.fill_diagonal(d, c.shape[1] + 1)
    return int(d.min())


def _random_codebook(c: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced random codes, each at least d from those kept, d lowered from b/2 until c fit."""
    for d in range(b // 2, 0, -1):
        kept: list[np.ndarray] = []
        for _ in range(200 * c):
            cand = rng.permutation(np.arange(b) < b // 2).astype(np.uint8)
            if all(int((cand != k).sum()) >= d for k in kept):
                kept.append(cand)
                if len(kept) == c:
                    return np.stack(kept)
    raise InputError(f"cannot find {c} distinct class codes of {b} bits: use more bits")


def make_codebook(num_classes: int, bits: int, seed: int = 0) -> Codebook:
    """``num_classes`` codes of ``bits`` bits, pairwise at least ``bits / 2`` apart where possible.

    Power-of-two ``bits`` and at most ``2·(bits − 1)`` classes: rows of the Hadamard matrix without
    its constant row (pairwise distance exactly ``bits / 2``, balanced), then their complements.
    Otherwise random balanced codes kept only when far enough from those already kept.

    Raises:
        InputError: more classes than distinct codes can separate.
    """
    if num_classes < 1:
        raise InputError("supervised targets need at least one class")
    if num_classes > 2 ** min(bits, 62):
        raise InputError(f"{num_classes} classes cannot have distinct {bits}-bit codes: use more bits")
    rng = np.random.default_rng(seed)
    if bits & (bits - 1) == 0 and num_classes <= 2 * (bits - 1):
        h = hadamard(bits)[1:]
        rows = rng.permutation(bits - 1)
        pm = h[rows[: min(num_classes, bits - 1)]]
        if num_classes > bits - 1:
            pm = np.concatenate([pm, -h[rows[: num_classes - (bits - 1)]]])
        codes = (pm > 0).astype(np.uint8)
    else:
        codes = _random_codebook(num_classes, bits, rng)
    return Codebook(codes, min_distance(codes))


def align_codebook(
    codes: np.ndarray, protos: np.ndarray, restarts: int = 32, iters: int = 20, seed: int = 0
) -> np.ndarray:
    """Re-arrange a codebook to agree with class prototypes without changing any distance.

    Alternates two assignments (Hungarian, scipy): codebook columns to logit bits, each with the
    sign (flip) that agrees best, then codebook rows to classes; both keep every pairwise Hamming
    distance of the rows. The alternation finds a local optimum, so it restarts from several
    random row orders and keeps the best agreement.

    Args:
        codes: ``(C, B)`` 0/1 codebook.
        protos: ``(C, B)`` class prototypes (mean logits, centred per bit).

    Returns:
        ``(C, B)`` uint8 0/1: row c is class c's target code.
    """
    from scipy.optimize import linear_sum_assignment

    p = np.asarray(protos, np.float64)
    p = p / np.maximum(np.abs(p).std(0, keepdims=True), 1e-12)  # bits on one scale
    rng = np.random.default_rng(seed)
    best, best_score = None, -np.inf
    for r in range(restarts):
        s = 2.0 * np.asarray(codes, np.float64) - 1
        if r:
            s = s[rng.permutation(len(s))]
        for _ in range(iters):
            corr = p.T @ s  # (bit j, codebook column k)
            _, cols = linear_sum_assignment(-np.abs(corr))
            s_new = s[:, cols] * np.where(corr[np.arange(len(cols)), cols] < 0, -1.0, 1.0)
            _, rows = linear_sum_assignment(-(p @ s_new.T))  # class c -> codebook row rows[c]
            s_new = s_new[rows]
            if np.array_equal(s_new, s):
                break
            s = s_new
        score = float((p * s).sum())
        if score > best_score:
            best, best_score = s, score
    return (best > 0).astype(np.uint8)
