"""An immutable view of a live index at one manifest generation: stable int64 ids, codes, item
metadata and the faiss index that answers with those ids.

Readers hold a :class:`Snapshot` for the whole of a request; a commit builds a new one and swaps
the reference, so a search never sees half a commit. Arrays are kept in ascending id order
(a fresh build's ids are its row positions, later ids only grow, removals keep the order), so
ties broken by position are ties broken by id.

faiss indexes: flat and lookup use ``IndexBinaryIDMap2`` over the codes; IVF keeps the base's
trained quantizer and its inverted lists, relabelled with the ids, with ``add_with_ids`` for
additions and an order-preserving removal (faiss's own swaps the last entry in).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import h5py
import numpy as np

from hashindex.core.errors import InputError, IntegrityError
from hashindex.core.validate import check_k
from hashindex.index.load import HashIndex, stored_codes
from hashindex.index.lookup import HammingLookup
from hashindex.index.manifest import ITEMS_FILE
from hashindex.search.ranking import FloatRows, Ranked, hamming_search, ranked, rerank_asymmetric
from hashindex.store.schema import as_str

logger = logging.getLogger(__name__)


def ivf_contents(fi) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, codes)`` held by a binary IVF's inverted lists, sorted by id."""
    import faiss

    il, cs = fi.invlists, fi.code_size
    ids, codes = [], []
    for lst in range(fi.nlist):
        n = il.list_size(lst)
        if n:
            ids.append(faiss.rev_swig_ptr(il.get_ids(lst), n).copy())
            codes.append(faiss.rev_swig_ptr(il.get_codes(lst), n * cs).copy().reshape(n, cs))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, cs), np.uint8)
    ids, codes = np.concatenate(ids), np.concatenate(codes)
    order = np.argsort(ids, kind="stable")
    return ids[order], codes[order]


def _ivf_rewrite(fi, edit) -> None:
    """Rewrite each inverted list as ``edit(ids) -> (new ids, keep mask)``, keeping entry order."""
    import faiss

    il, cs, removed = fi.invlists, fi.code_size, 0
    for lst in range(fi.nlist):
        n = il.list_size(lst)
        if not n:
            continue
        new_ids, keep = edit(faiss.rev_swig_ptr(il.get_ids(lst), n).copy())
        if keep is None and new_ids is None:
            continue
        codes = faiss.rev_swig_ptr(il.get_codes(lst), n * cs).copy().reshape(n, cs)
        if keep is not None:
            new_ids, codes = new_ids[keep], np.ascontiguousarray(codes[keep])
            removed += n - len(new_ids)
            il.resize(lst, len(new_ids))
        if len(new_ids):
            il.update_entries(
                lst, 0, len(new_ids), faiss.swig_ptr(np.ascontiguousarray(new_ids, np.int64)), faiss.swig_ptr(codes)
            )
    fi.ntotal -= removed


def _clone(fi):
    import faiss

    return faiss.deserialize_index_binary(faiss.serialize_index_binary(fi))


def _id_map(codes: np.ndarray, ids: np.ndarray, bits: int):
    import faiss

    fi = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
    if len(ids):
        fi.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(ids, np.int64))
    return fi


def flat_codes_view(fi) -> np.ndarray:
    """The codes of a flat faiss index as a read-only view of its storage (a memory-mapped
    file's pages, or its own vector), ``(ntotal, code_size)``. The array keeps ``fi`` alive:
    a row taken from an old snapshot stays valid after the snapshot is gone."""
    import faiss

    n, cs = fi.ntotal, fi.code_size
    if n == 0:
        return np.zeros((0, cs), np.uint8)
    address = faiss.rev_swig_ptr(fi.xb.data(), n * cs).__array_interface__["data"][0]
    return np.asarray(_Pinned(fi, address, n * cs)).reshape(n, cs)


class _Pinned:
    """Bytes owned by a faiss index, exposed to NumPy with the index as the array's base."""

    def __init__(self, owner, address: int, nbytes: int):
        self.owner = owner
        self.__array_interface__ = {"data": (address, True), "shape": (nbytes,), "typestr": "|u1", "version": 3}


class ItemNames:
    """Item names read from an index's items file by the rows asked for, so that a search on a
    100M-item index reads its hits' names, never all of them. The file stays open: a snapshot
    keeps reading the names it was made with even after a compaction swapped the folder.
    Anything but ``take``/an integer (an edit's concatenation or mask) loads them all once.
    """

    def __init__(self, path, n: int):
        self._f = h5py.File(path, "r")
        self._n, self._all = n, None

    def __len__(self) -> int:
        return self._n

    def take(self, pos) -> list[str]:
        pos = np.asarray(pos, np.int64).ravel()
        if self._all is not None:
            return [str(s) for s in self._all[pos]]
        rows, inv = np.unique(pos, return_inverse=True)  # h5py reads increasing rows
        raw = self._f["names"][rows] if len(rows) else []
        return [as_str(raw[i]) for i in inv]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self._all is None:
            self._all = np.array([as_str(s) for s in self._f["names"][()]], dtype=object)
        return self._all

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([key])[0]
        return self.__array__()[key]

    def __iter__(self):
        return iter(self.__array__())


class IdLookup:
    """A :class:`HammingLookup` over codes in id order that answers with ids, not positions."""

    def __init__(self, codes: np.ndarray, ids: np.ndarray):
        self.table, self.ids = HammingLookup(codes), ids

    def search(self, codes: np.ndarray, k: int):
        d, pos = self.table.search(codes, k)
        return d, self.ids[pos]


@dataclass(frozen=True)
class Snapshot:
    """A live index at one generation. Never mutated: commits make new snapshots."""

    generation: int
    index: HashIndex  # its faiss index (and lookup) answer with stable ids
    ids: np.ndarray  # int64, ascending
    codes: np.ndarray  # (n, bits // 8) uint8, rows in id order
    names: ItemNames | np.ndarray  # str per row: read on demand from the items file, or in memory
    labels: np.ndarray | None  # (n, C) uint8 multi-hot
    source_index: np.ndarray  # int64, the item's index in its source; -1 for added items
    float_row: np.ndarray  # int64: >= 0 row of the build's embeddings file, < 0: row -1-r of `extra`
    extra: np.ndarray  # (m, D) float32 embeddings of added items
    label_names: list | None = None
    embeddings_path: str = ""  # the build's embeddings file (float rows of base items)

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def bits(self) -> int:
        return self.index.bits

    def is_base(self) -> bool:
        """Whether the snapshot holds exactly the items of the build's embeddings file, in order."""
        return self.ntotal == self.index.ntotal and np.array_equal(self.float_row, np.arange(self.ntotal))

    def positions(self, ids) -> np.ndarray:
        """Row positions of ids.

        Raises:
            InputError: an id that is not (or no longer) in the index.
        """
        ids = np.asarray(ids, np.int64).ravel()
        pos = np.searchsorted(self.ids, ids)
        bad = (
            (pos >= len(self.ids)) | (self.ids[np.minimum(pos, len(self.ids) - 1)] != ids)
            if len(self.ids)
            else np.ones(len(ids), bool)
        )
        if bad.any():
            raise InputError(f"unknown id {int(ids[bad][0])}: not in the index (never added, or removed)")
        return pos

    def item(self, item_id: int) -> dict:
        """``{"id", "name", "label", "source_index"}`` of one item (InputError when unknown)."""
        p = int(self.positions([item_id])[0])
        return {
            "id": int(item_id),
            "name": self.name_list([p])[0],
            "label": self._label(p),
            "source_index": int(self.source_index[p]),
        }

    def name_list(self, pos) -> list[str]:
        """The names of the rows at ``pos``."""
        if isinstance(self.names, ItemNames):
            return self.names.take(pos)
        return [str(s) for s in self.names[np.asarray(pos, np.int64)]]

    def _label(self, p: int) -> str | None:
        """The item's labels as text: names (or column numbers) joined by commas."""
        if self.labels is None or self.labels.shape[1] == 0:
            return None
        on = np.flatnonzero(self.labels[p])
        return ",".join(self.label_names[j] if self.label_names else str(j) for j in on) or None

    def float_rows(self) -> LiveRows:
        return LiveRows(self)

    def search(
        self, x: np.ndarray, k: int, rerank: int | None = None, asymmetric: bool = False, device: str | None = "cpu"
    ) -> Ranked:
        """:func:`~hashindex.search.ranking.ranked` over this snapshot: ids, not positions, and float
        rows of added items from the commits; the Hamming search on ``device``.

        Raises:
            InputError: bad k/R, non-finite or wrong-width embeddings, an empty index.
        """
        rows = self.float_rows() if rerank is not None and not asymmetric else None
        try:
            return ranked(
                self.index, x, k, rerank, asymmetric, rows=rows, db_codes=self.codes, ids=self.ids, device=device
            )
        finally:
            if rows is not None:
                rows.close()

    def search_id(
        self, item_id: int, k: int, rerank: int | None = None, asymmetric: bool = False, device: str | None = "cpu"
    ):
        """Search with an indexed item: its stored code (or, to re-rank, its float embedding).
        The item itself comes first, at distance 0, even when more than k items share its code.

        Raises:
            InputError: unknown id, bad k, float re-ranking without the embeddings file.
        """
        k = check_k(k)
        p = self.positions([item_id])
        if rerank is not None or asymmetric:
            x = self.embedding_of(item_id)
            if x is None:
                raise InputError(
                    f"float embedding of item {item_id} unavailable (the embeddings file is gone): search without re-ranking"
                )
            d, ids, s = self.search(x, k, rerank, asymmetric, device)
        else:
            (d, ids), s = hamming_search(self.index, self.codes[p], k, device), None
        row = list(ids[0])
        j = row.index(item_id) if item_id in row else None
        if j is None:  # pushed out by ties of lower id: it takes the first place, the last one goes
            own = (
                1.0
                if not asymmetric
                else float(rerank_asymmetric(self.index.probe.logits(x), p[None], self.codes, 1)[0][0, 0])
            )
            ids = np.array([[item_id] + row[:-1]], np.int64)
            d = np.concatenate([[[0]], d[:, :-1]], axis=1).astype(np.int32)
            s = None if s is None else np.concatenate([[[own]], s[:, :-1]], axis=1)
        else:
            order = [j] + [i for i in range(len(row)) if i != j]
            ids, d = ids[:, order], d[:, order]
            s = None if s is None else s[:, order]
        return d, ids, s

    def embedding_of(self, item_id: int) -> np.ndarray | None:
        """The stored float embedding of an item, ``(1, D)``; None when its file is gone."""
        rows = self.float_rows()
        try:
            return rows.take(self.positions([item_id]))
        except InputError:
            return None
        finally:
            rows.close()

    def results(self, d, ids, scores=None) -> list[list[dict]]:
        """One list of ``{"id", "name", "label", "distance"[, "score"]}`` per query."""
        out = []
        for q in range(len(ids)):
            pos = self.positions(ids[q])
            out.append(
                [
                    {
                        "id": int(i),
                        "name": name,
                        "label": self._label(int(p)),
                        "distance": int(dist),
                        **({} if scores is None else {"score": round(float(scores[q, r]), 6)}),
                    }
                    for r, (dist, i, p, name) in enumerate(zip(d[q], ids[q], pos, self.name_list(pos)))
                ]
            )
        return out


class LiveRows:
    """Float embeddings of a snapshot's rows: the build's embeddings file for base items, the
    commits' (or the compacted base's companion file's) copies for added ones."""

    def __init__(self, snap: Snapshot):
        self.snap, self._base = snap, None
        self.shape = (snap.ntotal, snap.index.probe.input_dim)
        self.path = snap.embeddings_path

    def take(self, pos: np.ndarray) -> np.ndarray:
        ref = self.snap.float_row[np.asarray(pos, np.int64).ravel()]
        out = np.empty((len(ref), self.shape[1]), np.float32)
        added = ref < 0
        out[added] = self.snap.extra[-1 - ref[added]]
        if (~added).any():
            if self._base is None:  # InputError when gone, MismatchError when another file
                self._base = FloatRows(self.snap.index.database().path)
            out[~added] = self._base.take(ref[~added])
        return out.reshape(*np.shape(pos), self.shape[1])

    def close(self) -> None:
        if self._base is not None:
            self._base.close()


def base_snapshot(hi: HashIndex, generation: int, extra: np.ndarray | None, embeddings_path: str) -> Snapshot:
    """The snapshot of a loaded base folder, before any commit is replayed (``hi`` keeps its
    manifest: the snapshot only swaps in a faiss index that answers with ids).

    A fresh build (ids = row positions) of a flat index is searched as loaded, memory-mapped
    when ``load_index(mmap=True)`` opened it, its codes a view of the faiss index: no copy of
    them. Names are read from the items file by the rows asked for (:class:`ItemNames`).
    """
    items = hi.items(names=False)  # names: read by the rows asked for
    n = hi.ntotal
    with h5py.File(hi.path / ITEMS_FILE, "r") as f:
        ids = f["ids"][()].astype(np.int64) if "ids" in f else np.arange(n, dtype=np.int64)
        float_row = f["float_row"][()].astype(np.int64) if "float_row" in f else np.arange(n, dtype=np.int64)
    if len(ids) != n or (n and (np.diff(ids) <= 0).any()) or len(float_row) != n:
        raise IntegrityError(f"{hi.path}: {ITEMS_FILE} has ids that are not strictly ascending or not one per item")
    fi = hi.faiss_index
    identity = n == 0 or (ids[0] == 0 and ids[-1] == n - 1)  # strictly ascending: then ids == positions
    if hi.kind == "ivf":
        codes = stored_codes(fi)
        fi.make_direct_map(False)  # stored_codes made one; lists are edited directly from now on
        if not identity:
            fi = _clone(fi)  # a memory-mapped index's lists are read-only
            _ivf_rewrite(fi, lambda lid: (ids[lid], None))
    elif identity:
        codes = flat_codes_view(fi)
    else:
        codes = stored_codes(fi)
        fi = _id_map(codes, ids, hi.bits)
    dim = hi.probe.input_dim
    ex = np.zeros((0, dim), np.float32) if extra is None else extra
    index = dataclasses.replace(hi, faiss_index=fi, lookup=IdLookup(codes, ids) if hi.kind == "lookup" else None)
    return Snapshot(
        generation,
        index,
        ids,
        codes,
        ItemNames(hi.path / ITEMS_FILE, n),
        items["labels"],
        items["source_index"].astype(np.int64),
        float_row,
        ex,
        items["label_names"],
        embeddings_path,
    )


def with_commit(snap: Snapshot, commit: dict, generation: int) -> Snapshot:
    """A new snapshot with one commit applied (the old one is untouched).

    Raises:
        IntegrityError: an add that reuses an id, or a remove of an unknown id.
    """
    hi = snap.index
    if commit["kind"] == "add":
        new_ids = commit["ids"]
        if len(new_ids) and ((np.diff(new_ids) <= 0).any() or (snap.ntotal and new_ids[0] <= snap.ids[-1])):
            raise IntegrityError("a commit adds ids that are not new and ascending (a duplicated id)")
        if commit["codes"].shape[1] != snap.codes.shape[1] or commit["embeddings"].shape[1] != hi.probe.input_dim:
            raise IntegrityError("a commit holds codes or embeddings of another width than the index")
        ids = np.concatenate([snap.ids, new_ids])
        codes = np.concatenate([snap.codes, commit["codes"]])
        names = np.concatenate([snap.names, np.array([str(s) for s in commit["names"]], dtype=object)])
        labels = snap.labels
        if labels is not None:
            new = (
                commit["labels"]
                if commit["labels"].shape[1] == labels.shape[1]
                else np.zeros((len(new_ids), labels.shape[1]), np.uint8)
            )
            labels = np.concatenate([labels, new])
        extra = np.concatenate([snap.extra, commit["embeddings"]])
        float_row = np.concatenate([snap.float_row, -1 - np.arange(len(snap.extra), len(extra), dtype=np.int64)])
        source_index = np.concatenate([snap.source_index, commit["source_index"]])
        keep = None
    else:
        removed = np.unique(commit["removed"])
        try:
            pos = snap.positions(removed)
        except InputError as e:
            raise IntegrityError(f"a remove commit names an id that is not in the index: {e}") from None
        keep = np.ones(snap.ntotal, bool)
        keep[pos] = False
        ids, codes, names = snap.ids[keep], snap.codes[keep], snap.names[keep]
        labels = None if snap.labels is None else snap.labels[keep]
        float_row, source_index, extra = snap.float_row[keep], snap.source_index[keep], snap.extra
    if hi.kind == "ivf":
        fi = _clone(hi.faiss_index)
        if keep is None:
            fi.add_with_ids(np.ascontiguousarray(commit["codes"]), np.ascontiguousarray(commit["ids"]))
        else:

            def drop(lid):
                keep = ~np.isin(lid, removed)
                return (lid, keep) if not keep.all() else (None, None)

            _ivf_rewrite(fi, drop)
    else:
        fi = _id_map(codes, ids, hi.bits)
    lookup = IdLookup(codes, ids) if hi.kind == "lookup" and len(ids) else None
    index = dataclasses.replace(hi, faiss_index=fi, lookup=lookup)
    return Snapshot(
        generation,
        index,
        ids,
        codes,
        names,
        labels,
        source_index,
        float_row,
        extra,
        snap.label_names,
        snap.embeddings_path,
    )
