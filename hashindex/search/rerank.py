"""Re-ranking by float cosine: the Hamming top R·k re-ordered by the database's float embeddings,
read row by row (memory-mapped when the HDF5 dataset is contiguous; never loaded as a float index).
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from hashindex.probe.baselines import l2_normalize
from hashindex.search.ordering import sort_results


class FloatRows:
    """Random access to rows of ``/embeddings`` in an HDF5 file without loading the matrix.

    A contiguous, uncompressed dataset is memory-mapped (the OS page cache holds what is read);
    a chunked one is read with sorted HDF5 selections.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._f = h5py.File(self.path, "r")
        ds = self._f["embeddings"]
        self.shape = ds.shape
        self._mm = None
        if ds.chunks is None and ds.compression is None and ds.dtype == np.float32:
            offset = ds.id.get_offset()
            if offset is not None:
                self._mm = np.memmap(self.path, dtype=np.float32, mode="r", offset=offset, shape=ds.shape)
        self._ds = ds

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any shape) → float32 array of shape ``ids.shape + (D,)``."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if self._mm is not None:
            out = self._mm[flat]
        else:
            uniq, inv = np.unique(flat, return_inverse=True)
            out = self._ds[uniq][inv]
        return np.asarray(out, dtype=np.float32).reshape(*np.shape(ids), self.shape[1])

    def close(self) -> None:
        self._f.close()


def rerank_float(xq: np.ndarray, cand: np.ndarray, rows: FloatRows, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-order candidate ids by cosine similarity of the float vectors; top k by (score desc, id)."""
    qn = l2_normalize(np.asarray(xq, np.float32))
    # Gather candidates for a few queries at a time: R·k rows of D floats each (64 MiB: the rows
    # are read twice, for the dot products and the norms, while still in cache). A batched
    # matrix-vector product and an einsum of squares, without the temporary of linalg.norm:
    # 1.5x faster than before at 400 rows of 1280 floats per query.
    step = max(1, (64 << 20) // max(1, cand.shape[1] * rows.shape[1] * 4))
    s_out, i_out = [], []
    for s in range(0, len(cand), step):
        vec = rows.take(cand[s : s + step])
        dots = np.matmul(vec, qn[s : s + step, :, None])[..., 0]
        sims = dots / np.maximum(np.sqrt(np.einsum("qcd,qcd->qc", vec, vec)), 1e-12)
        sc, ids = sort_results(sims.astype(np.float32), cand[s : s + step], descending=True)
        s_out.append(sc[:, :k])
        i_out.append(ids[:, :k])
    return np.concatenate(s_out), np.concatenate(i_out)


def carry_over(values: np.ndarray, cand: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``values[q, j]`` where ``cand[q, j] == ids[q, r]``: carries candidates' Hamming distances
    over to their re-ranked order (ids are unique within a row)."""
    n = int(max(cand.max(initial=0), ids.max(initial=0))) + 1
    rows = np.arange(len(cand))[:, None] * n
    flat = (cand + rows).ravel()
    order = np.argsort(flat, kind="stable")
    pos = order[np.searchsorted(flat[order], (ids + rows).ravel())]
    return values.ravel()[pos].reshape(ids.shape)
