"""An immutable view of an index at one manifest generation: stable int64 ids, codes, item
metadata, and the engine that searches them.

Readers hold a :class:`Snapshot` for the whole of a request; a commit builds a new one and swaps
the reference, so a search never sees half a commit. Rows are kept in ascending id order (a
fresh build's ids are its row positions, later ids only grow, removals keep the order), so ties
broken by row are ties broken by id. The engine is built on first search (:meth:`Snapshot.index`),
so replaying many commits when an index opens builds it once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.paths import inside
from hashindex.core.validate import check_k
from hashindex.index.items import ItemNames
from hashindex.index.load import HashIndex
from hashindex.search.engines import CodeIndex
from hashindex.search.filters import Allowed, Columns, parse_where, resolve
from hashindex.search.ranking import Ranked, hamming_rows, ranked
from hashindex.search.rerank import FloatRows


@dataclass(frozen=True)
class Snapshot:
    """An index at one generation. Never mutated: commits make new snapshots.

    Attributes:
        generation: the manifest generation it shows.
        base: the loaded base folder (manifest, probe, faiss index).
        ids: int64 ascending ids, one per row.
        codes: ``(n, bits // 8)`` uint8 codes, rows in id order.
        names: a name per row, read on demand from the items file or held in memory.
        labels: ``(n, C)`` uint8 multi-hot labels, or None.
        source_index: int64 position of each item in its source (-1 when added from elsewhere).
        float_row: int64: >= 0 a row of the build's embeddings file, < 0 row -1-r of ``extra``.
        extra: ``(m, D)`` float32 embeddings of items added since the build.
        label_names: the classes' names, or None.
        embeddings_path: the build's embeddings file (float rows of base items).
        roots: the folders item names are relative to (0: the build's source; None: none).
        root_id: per row, which of ``roots`` (None: all 0).
        meta: metadata field -> ``(n,)`` array (float64, NaN for none; or strings).
        faiss_index: the faiss index of these rows (the base's, or an edited IVF), or None.
    """

    generation: int
    base: HashIndex
    ids: np.ndarray
    codes: np.ndarray
    names: ItemNames | np.ndarray
    labels: np.ndarray | None
    source_index: np.ndarray
    float_row: np.ndarray
    extra: np.ndarray
    label_names: list | None = None
    embeddings_path: str = ""
    roots: tuple = (None,)
    root_id: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    faiss_index: object = None
    # Built on first use, per snapshot (a replace() makes fresh ones).
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def bits(self) -> int:
        return self.base.bits

    @property
    def kind(self) -> str:
        return self.base.kind

    @property
    def probe(self):
        return self.base.probe

    @property
    def index(self) -> CodeIndex:
        """The codes with their engine, built on first use (once, even under concurrent searches)."""
        with self._lock:
            if "index" not in self._cache:
                from hashindex.live.engine import snapshot_engine

                self._cache["index"] = CodeIndex(self.codes, self.ids, snapshot_engine(self), self.kind, self.probe)
            return self._cache["index"]

    def is_base(self) -> bool:
        """Whether the snapshot holds exactly the items of the build's embeddings file, in order."""
        return self.ntotal == self.base.ntotal and np.array_equal(self.float_row, np.arange(self.ntotal))

    def positions(self, ids) -> np.ndarray:
        """Row positions of ids.

        Raises:
            InputError: an id that is not (or no longer) in the index.
        """
        ids = np.asarray(ids, np.int64).ravel()
        pos = np.searchsorted(self.ids, ids)
        bad = np.ones(len(ids), bool)
        if len(self.ids):
            bad = (pos >= len(self.ids)) | (self.ids[np.minimum(pos, len(self.ids) - 1)] != ids)
        if bad.any():
            raise InputError(f"unknown id {int(ids[bad][0])}: not in the index (never added, or removed)")
        return pos

    def item(self, item_id: int) -> dict:
        """``{"id", "name", "label", "source_index"}`` of one item (InputError when unknown)."""
        p = int(self.positions([item_id])[0])
        return {
            "id": int(item_id),
            "name": self.name_list([p])[0],
            "label": self.label_text(p),
            "source_index": int(self.source_index[p]),
        }

    def name_list(self, pos) -> list[str]:
        """The names of the rows at ``pos``."""
        if isinstance(self.names, ItemNames):
            return self.names.take(pos)
        return [str(s) for s in self.names[np.asarray(pos, np.int64)]]

    def label_text(self, p: int) -> str:
        """The item's labels as text: names (or column numbers) joined by commas; "" when none."""
        if self.labels is None or self.labels.shape[1] == 0:
            return ""
        on = np.flatnonzero(self.labels[p])
        return ",".join(self.label_names[j] if self.label_names else str(j) for j in on)

    def root_of(self, p: int) -> str | None:
        """The folder the name of row ``p`` is relative to (None: not known)."""
        r = 0 if self.root_id is None else int(self.root_id[p])
        return self.roots[r] if 0 <= r < len(self.roots) else None

    def file_of(self, p: int):
        """The image file of row ``p`` inside its root folder, or None (no root, not a file, or
        a name that leads out of its root)."""
        return inside(self.root_of(p), self.name_list([p])[0])

    def columns(self) -> Columns:
        """The filterable fields of the rows (indexed on first use, kept with the snapshot)."""
        with self._lock:
            if "columns" not in self._cache:
                self._cache["columns"] = Columns(self.ntotal, self.labels, self.label_names, self.meta)
            return self._cache["columns"]

    def allowed(self, where=None, ids=None) -> Allowed | None:
        """The rows a search may return: those satisfying ``where`` (see
        :mod:`hashindex.search.filters`) and, when given, among ``ids`` (ids not in the index are
        ignored). None: no filter.

        Raises:
            InputError: a malformed filter or an unknown field or label.
        """
        conditions = parse_where(where)
        rows = None
        if ids is not None:
            ids = np.unique(np.asarray(ids, np.int64).ravel())
            pos = np.searchsorted(self.ids, ids)
            ok = pos < self.ntotal
            ok[ok] = self.ids[pos[ok]] == ids[ok]
            rows = pos[ok]
        if not conditions and rows is None:
            return None
        return resolve(conditions, self.columns(), rows)

    def float_rows(self) -> LiveRows:
        return LiveRows(self)

    def search(self, x, k: int, rerank=None, asymmetric=False, device="cpu", *, nprobe=None, allowed=None) -> Ranked:
        """:func:`~hashindex.search.ranking.ranked` over this snapshot (rows; float rows of added
        items from the commits).

        Raises:
            InputError: bad k/R, non-finite or wrong-width embeddings, an empty index.
        """
        rows = self.float_rows() if rerank is not None and not asymmetric else None
        try:
            return ranked(
                self.index, x, k, rerank, asymmetric, rows=rows, device=device, nprobe=nprobe, allowed=allowed
            )
        finally:
            if rows is not None:
                rows.close()

    def search_codes(self, codes, k: int, device="cpu", *, nprobe=None, allowed=None):
        """Hamming top-k rows of packed query codes: ``(D, rows)``."""
        return hamming_rows(self.index, codes, k, device, nprobe=nprobe, allowed=allowed)

    def search_id(
        self, item_id: int, k: int, rerank=None, asymmetric=False, device="cpu", *, nprobe=None, allowed=None
    ) -> Ranked:
        """Search with an indexed item: its stored code (or, to re-rank, its float embedding).
        The item itself comes first, at distance 0, even when more than k items share its code
        (unless a filter excludes it).

        Raises:
            InputError: unknown id, bad k, float re-ranking without the embeddings file.
        """
        k = check_k(k)
        p = int(self.positions([item_id])[0])
        kw = {"nprobe": nprobe, "allowed": allowed}
        if rerank is not None or asymmetric:
            x = self.embedding_of(item_id)
            if x is None:
                raise InputError(
                    f"float embedding of item {item_id} unavailable (the embeddings file is gone): search without re-ranking"
                )
            res = self.search(x, k, rerank, asymmetric, device, **kw)
        else:
            res = Ranked(*self.search_codes(self.codes[[p]], k, device, **kw), None)
        if allowed is not None and not allowed.mask(self.ntotal)[p]:
            return res
        return _item_first(res, p, asymmetric, self)

    def embedding_of(self, item_id: int) -> np.ndarray | None:
        """The stored float embedding of an item, ``(1, D)``; None when its file is gone."""
        rows = self.float_rows()
        try:
            return rows.take(self.positions([item_id]))
        except InputError:
            return None
        finally:
            rows.close()

    def hits(self, d, rows, scores=None) -> list[list[dict]]:
        """One list of ``{"id", "name", "label", "distance"[, "score"]}`` per query."""
        out = []
        for q in range(len(rows)):
            names = self.name_list(rows[q])
            out.append(
                [
                    {
                        "id": int(self.ids[p]),
                        "name": name,
                        "label": self.label_text(int(p)),
                        "distance": int(dist),
                        **({} if scores is None else {"score": round(float(scores[q, r]), 6)}),
                    }
                    for r, (dist, p, name) in enumerate(zip(d[q], rows[q], names))
                ]
            )
        return out


def _item_first(res: Ranked, p: int, asymmetric: bool, snap: Snapshot) -> Ranked:
    """``res`` with row ``p`` in first place (pushed out by ties of lower id: it takes the first
    place and the last one goes)."""
    d, rows, s = res
    row = list(rows[0])
    if p in row:
        order = [row.index(p)] + [i for i in range(len(row)) if i != row.index(p)]
        return Ranked(d[:, order], rows[:, order], None if s is None else s[:, order])
    own = 1.0
    if asymmetric:
        from hashindex.search.asymmetric import rerank_asymmetric

        x = snap.embedding_of(int(snap.ids[p]))
        own = float(rerank_asymmetric(snap.probe.logits(x), np.array([[p]]), snap.codes, 1)[0][0, 0])
    rows = np.array([[p] + row[:-1]], np.int64)
    d = np.concatenate([[[0]], d[:, :-1]], axis=1).astype(np.int32)
    s = None if s is None else np.concatenate([[[own]], s[:, :-1]], axis=1)
    return Ranked(d, rows, s)


class LiveRows:
    """Float embeddings of a snapshot's rows: the build's embeddings file for base items, the
    commits' (or the compacted base's companion file's) copies for added ones."""

    def __init__(self, snap: Snapshot):
        self.snap, self._base = snap, None
        self.shape = (snap.ntotal, snap.probe.input_dim)
        self.path = snap.embeddings_path

    def take(self, pos: np.ndarray) -> np.ndarray:
        ref = self.snap.float_row[np.asarray(pos, np.int64).ravel()]
        out = np.empty((len(ref), self.shape[1]), np.float32)
        added = ref < 0
        out[added] = self.snap.extra[-1 - ref[added]]
        if (~added).any():
            if self._base is None:  # InputError when gone, MismatchError when another file
                self._base = FloatRows(self.snap.base.database().path)
            out[~added] = self._base.take(ref[~added])
        return out.reshape(*np.shape(pos), self.shape[1])

    def close(self) -> None:
        if self._base is not None:
            self._base.close()


def source_root(manifest_embeddings: dict) -> str | None:
    """The folder the build's item names are relative to: the source recorded in the embeddings'
    provenance (folders and list files), made absolute; None for other sources."""
    import os

    source = manifest_embeddings.get("source") or {}
    if (
        not isinstance(source, dict)
        or source.get("kind") not in ("folder", "list", "files")
        or not source.get("location")
    ):
        return None
    return os.path.abspath(str(source["location"]))
