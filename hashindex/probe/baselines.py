"""Classic hashing baselines as linear projections: bits = 1[(x̂ − μ)·W > 0], x̂ = x/‖x‖.

- ``lsh``: random Gaussian hyperplanes after mean-centring (Charikar 2002).
- ``pca``: the top principal directions (PCA-sign).
- ``pca-rr``: PCA followed by a random orthogonal rotation (Hashing-Baseline, arXiv 2509.14427).
- ``itq``: PCA followed by the rotation that minimises quantisation error (Gong & Lazebnik 2011).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from hashindex.core.errors import InputError

BaselineMethod = Literal["lsh", "pca", "pca-rr", "itq"]
BASELINES: tuple[str, ...] = ("lsh", "pca", "pca-rr", "itq")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _random_rotation(rng: np.random.Generator, b: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((b, b)))
    return q * np.sign(np.diag(r))  # uniform (Haar) orthogonal matrix


def _pca(xc: np.ndarray, bits: int) -> np.ndarray:
    cov = (xc.T @ xc) / max(1, len(xc) - 1)
    w, v = np.linalg.eigh(cov.astype(np.float64))
    return v[:, np.argsort(w)[::-1][:bits]]


def fit_linear(
    x: np.ndarray, bits: int, method: BaselineMethod, seed: int = 0, itq_iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a baseline on training embeddings.

    Args:
        x: ``(n, D)`` float embeddings (L2-normalised here).
        bits: code length.
        method: one of ``lsh``, ``pca``, ``pca-rr``, ``itq``.
        seed: seed of the random parts.
        itq_iters: ITQ alternating-minimisation iterations.

    Returns:
        ``(mean (D,), W (D, bits))`` float32.

    Raises:
        InputError: PCA-based methods with more bits than dimensions or samples.
    """
    rng = np.random.default_rng(seed)
    xn = l2_normalize(np.asarray(x, dtype=np.float64))
    mean = xn.mean(axis=0)
    xc = xn - mean
    d = x.shape[1]
    if method == "lsh":
        w = rng.standard_normal((d, bits))
    else:
        if bits > min(d, len(x)):
            raise InputError(f"{method} needs bits <= min(dim, samples) = {min(d, len(x))}, got {bits}")
        w = _pca(xc, bits)
        if method == "pca-rr":
            w = w @ _random_rotation(rng, bits)
        elif method == "itq":
            v = xc @ w
            r = _random_rotation(rng, bits)
            for _ in range(itq_iters):
                b = np.where(v @ r >= 0, 1.0, -1.0)
                u, _, vt = np.linalg.svd(v.T @ b)
                r = u @ vt
            w = w @ r
        elif method != "pca":
            raise InputError(f"unknown baseline {method!r}: use one of {', '.join(BASELINES)}")
    return mean.astype(np.float32), np.ascontiguousarray(w, dtype=np.float32)
