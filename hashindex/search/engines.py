"""Engines: what answers an exact (or IVF) Hamming top-k over a set of packed codes.

Every engine answers with *row positions* into the codes it was made from (rows are kept in id
order, so ties broken by position are ties broken by id), and takes an optional filter: the rows
a result may come from (:class:`~hashindex.search.filters.Allowed`), applied when candidates are
verified, so the k results all satisfy it.

- :class:`FlatEngine`: faiss ``IndexBinaryFlat`` (a scan); filtered queries scan with a mask.
- :class:`IVFEngine`: faiss ``IndexBinaryIVF`` (approximate, ``nprobe`` lists per query); rows
  whose probed lists held fewer than k codes are completed by an exhaustive search.
- :class:`MIHEngine`: exact multi-index hashing (:mod:`hashindex.index.mih`); the ``lookup`` kind
  is its one-table case (codes of at most 16 bits, the whole code as the key).

:class:`CodeIndex` bundles codes, ids and an engine: the thing searches run on, for an index
folder, a live snapshot or codes held in memory (benchmarks).
"""

from __future__ import annotations

import numpy as np

from hashindex.core.config import IndexConfig, check_nprobe
from hashindex.core.errors import InputError
from hashindex.index import faiss_access
from hashindex.search.filters import Allowed


def _kernels():
    """The compiled kernels, imported on first use (numba's import is not free)."""
    from hashindex.search import kernels

    return kernels


def _sorted(d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((p, d), axis=1)
    return np.take_along_axis(d, order, 1).astype(np.int32), np.take_along_axis(p, order, 1).astype(np.int64)


class FlatEngine:
    """An exhaustive scan: faiss ``IndexBinaryFlat`` whose ids are row positions."""

    kind = "flat"

    def __init__(self, fi, codes: np.ndarray):
        self.fi, self.codes = fi, codes

    def search(self, q: np.ndarray, k: int, *, nprobe=None, allowed: Allowed | None = None):
        if allowed is not None:
            return _kernels().scan_topk(self.codes, q, k, allowed.mask(len(self.codes)))
        d, p = self.fi.search(q, k)
        return _sorted(d, p)


class IVFEngine:
    """faiss ``IndexBinaryIVF``; its lists hold ``list_ids`` that ``ids`` maps to rows (a fresh
    build's lists hold row positions: ``ids`` None)."""

    kind = "ivf"

    def __init__(self, fi, codes: np.ndarray, ids: np.ndarray | None, nprobe: int):
        self.fi, self.codes, self.ids, self.nprobe = fi, codes, ids, nprobe

    def _rows(self, list_ids: np.ndarray) -> np.ndarray:
        return list_ids if self.ids is None else np.searchsorted(self.ids, list_ids)

    def search(self, q: np.ndarray, k: int, *, nprobe=None, allowed: Allowed | None = None):
        import faiss

        nprobe = self.fi.nprobe if nprobe is None else check_nprobe(nprobe, self.fi.nlist)
        if allowed is not None:
            return self._filtered(q, k, nprobe, allowed)
        d, i = self.fi.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        short = (i < 0).any(axis=1)
        if short.any():  # exhaustive for the rows that came back short: never a placeholder -1
            params = faiss.SearchParametersIVF(nprobe=self.fi.nlist)
            d[short], i[short] = self.fi.search(np.ascontiguousarray(q[short]), k, params=params)
        return _sorted(d, self._rows(i))

    def _filtered(self, q, k, nprobe, allowed: Allowed):
        """Within each query's probed lists, the k nearest allowed rows; short rows are
        completed over all lists (as unfiltered)."""
        mask = allowed.mask(len(self.codes))
        lists = faiss_access.ivf_probe_lists(self.fi, q, nprobe)
        d_out = np.empty((len(q), k), np.int32)
        p_out = np.empty((len(q), k), np.int64)
        for r in range(len(q)):
            rows = np.concatenate([self._rows(faiss_access.ivf_list(self.fi, int(lst))[0]) for lst in lists[r]])
            rows = np.sort(rows[mask[rows]])
            if len(rows) < k:
                rows = np.flatnonzero(mask)
            d, p = _kernels().scan_topk(self.codes, q[r : r + 1], k, None, rows)
            d_out[r], p_out[r] = d[0], p[0]
        return d_out, p_out


class CodeIndex:
    """Packed codes in id order, their ids, and the engine that searches them.

    Attributes:
        codes: ``(n, bits // 8)`` uint8, row ``i`` holds the item with the i-th smallest id.
        ids: int64 ascending ids of the rows.
        engine: the index kind's engine (answers with row positions).
        kind: ``flat``, ``ivf``, ``lookup`` or ``mih``.
    """

    def __init__(self, codes: np.ndarray, ids: np.ndarray | None, engine, kind: str, probe=None):
        self.codes = codes
        self.ids = np.arange(len(codes), dtype=np.int64) if ids is None else ids
        self.engine, self.kind, self.probe = engine, kind, probe
        self.device_cache: tuple | None = None  # (device, engine) of a GPU search (hashindex.search.gpu)

    @property
    def ntotal(self) -> int:
        return len(self.codes)

    @property
    def bits(self) -> int:
        return self.codes.shape[1] * 8

    @classmethod
    def from_codes(cls, codes: np.ndarray, config: IndexConfig = IndexConfig("flat"), *, ids=None, probe=None):
        """An index of codes held in memory, its engine built now (benchmarks, tests)."""
        from hashindex.index.build import make_faiss_index

        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        cfg = config.resolved(len(codes), codes.shape[1] * 8)
        fi = make_faiss_index(codes, cfg) if cfg.kind in ("flat", "ivf") else None
        return cls(codes, ids, engine_for(cfg, codes, fi), cfg.kind, probe)

    def search(self, q: np.ndarray, k: int, *, nprobe=None, allowed: Allowed | None = None):
        """``(D, rows)``: the top-k rows by (distance, id), ``k`` capped at the rows allowed.

        Raises:
            InputError: an empty index, or a filter that no item satisfies.
        """
        n = self.ntotal if allowed is None else allowed.count(self.ntotal)
        if n == 0:
            raise InputError("the index is empty" if self.ntotal == 0 else "no item satisfies the filter")
        k = min(k, n)
        if allowed is not None and allowed.is_small(self.ntotal):
            return _kernels().scan_topk(self.codes, q, k, None, allowed.rows(self.ntotal))
        return self.engine.search(q, k, nprobe=nprobe, allowed=allowed)


def engine_for(cfg: IndexConfig, codes: np.ndarray, fi=None, *, ids: np.ndarray | None = None, tables=None):
    """The engine of a resolved index config over ``codes`` (``fi``: the faiss index that holds
    them, when there is one; ``ids``: what an IVF's lists hold, when not row positions;
    ``tables``: multi-index hashing tables already built or loaded)."""
    if cfg.kind == "flat":
        return FlatEngine(fi if fi is not None else faiss_access.flat_index(codes), codes)
    if cfg.kind == "lookup":  # multi-index hashing with one table: the short code is the key
        from hashindex.index.mih import MIHTables

        return MIHEngine(codes, tables if tables is not None else MIHTables.build(codes, 1), kind="lookup")
    if cfg.kind == "ivf":
        return IVFEngine(fi, codes, ids, int(cfg.nprobe))
    if cfg.kind == "mih":
        from hashindex.index.mih import MIHTables

        return MIHEngine(codes, tables if tables is not None else MIHTables.build(codes, cfg.tables))
    raise InputError(f"unknown index kind {cfg.kind!r}")


class MIHEngine:
    """Exact multi-index hashing over ``codes`` (:mod:`hashindex.index.mih`)."""

    def __init__(self, codes: np.ndarray, tables, kind: str = "mih"):
        self.codes, self.tables, self.kind = codes, tables, kind

    def search(self, q: np.ndarray, k: int, *, nprobe=None, allowed: Allowed | None = None):
        mask = None if allowed is None else allowed.mask(len(self.codes))
        return _kernels().mih_topk(self.tables, self.codes, q, k, mask)
