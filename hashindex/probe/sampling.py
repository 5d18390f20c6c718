"""Training samples streamed from an embeddings file: a probe fits on a sample of the rows, so a
file of any size is read once, chunk by chunk, and only the sample is held in memory."""

from __future__ import annotations

import h5py
import numpy as np

from hashindex.store.reader import Embeddings

CHUNK = 65536


def sample_rows(n: int, sample: int | None, seed: int) -> np.ndarray | None:
    """Sorted row ids of a uniform sample of ``sample`` of ``n`` rows (None: all rows)."""
    if sample is None or sample >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def read_rows(emb: Embeddings, rows: np.ndarray | None, view: int | None = None, chunk: int = CHUNK) -> np.ndarray:
    """The eval embeddings (or cached view ``view``) of the given sorted rows, read in contiguous
    chunks (h5py point selections of many rows are slow), float32 ``(len(rows), D)``."""
    if rows is None:
        return emb.embeddings() if view is None else emb.view(view)
    out = np.empty((len(rows), emb.dim), np.float32)
    with h5py.File(emb.path, "r") as f:
        d = f["embeddings"] if view is None else f["views"]
        pos = 0
        for s in range(0, emb.n, chunk):
            hi = int(np.searchsorted(rows, s + chunk))
            if hi > pos:
                block = d[s : s + chunk] if view is None else d[s : s + chunk, view]
                out[pos:hi] = block[rows[pos:hi] - s]
                pos = hi
    return out
