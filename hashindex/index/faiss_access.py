"""One small named accessor per faiss internal the project relies on (as faiss's own
``contrib/inspect_tools.py`` does), so no other module reaches into faiss's structures."""

from __future__ import annotations

import numpy as np


def stored_codes(fi) -> np.ndarray:
    """The packed codes held by a faiss binary index, ``(ntotal, bits // 8)``, in id order."""
    import faiss

    if isinstance(fi, faiss.IndexBinaryFlat):
        return faiss.vector_to_array(fi.xb).reshape(fi.ntotal, fi.code_size)
    fi.make_direct_map()
    return fi.reconstruct_n(0, fi.ntotal)


def is_ivf(fi) -> bool:
    """Whether a faiss binary index is an inverted-file index (it has lists and ``nprobe``)."""
    import faiss

    return isinstance(fi, faiss.IndexBinaryIVF)


def flat_index(codes: np.ndarray):
    """A faiss ``IndexBinaryFlat`` holding ``codes`` (row position = faiss id)."""
    import faiss

    fi = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    if len(codes):
        fi.add(np.ascontiguousarray(codes))
    return fi


def clone_index(fi):
    """A deep copy of a faiss binary index (a memory-mapped one's copy is writable)."""
    import faiss

    return faiss.deserialize_index_binary(faiss.serialize_index_binary(fi))


def flat_codes_view(fi) -> np.ndarray:
    """The codes of a flat faiss index as a read-only view of its storage (a memory-mapped
    file's pages, or its own vector), ``(ntotal, code_size)``. The array keeps ``fi`` alive:
    a row taken from an old snapshot stays valid after the snapshot is gone."""
    import faiss

    n, cs = fi.ntotal, fi.code_size
    if n == 0:
        return np.zeros((0, cs), np.uint8)
    address = faiss.rev_swig_ptr(fi.xb.data(), n * cs).__array_interface__["data"][0]
    return np.asarray(Pinned(fi, address, n * cs)).reshape(n, cs)


class Pinned:
    """Bytes owned by a faiss index, exposed to NumPy with the index as the array's base."""

    def __init__(self, owner, address: int, nbytes: int):
        self.owner = owner
        self.__array_interface__ = {"data": (address, True), "shape": (nbytes,), "typestr": "|u1", "version": 3}


def ivf_list(fi, lst: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, codes)`` of one inverted list of a binary IVF, as copies."""
    import faiss

    il, cs = fi.invlists, fi.code_size
    n = il.list_size(lst)
    if not n:
        return np.zeros(0, np.int64), np.zeros((0, cs), np.uint8)
    ids = faiss.rev_swig_ptr(il.get_ids(lst), n).copy()
    return ids, faiss.rev_swig_ptr(il.get_codes(lst), n * cs).copy().reshape(n, cs)


def ivf_contents(fi) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, codes)`` held by a binary IVF's inverted lists, sorted by id."""
    parts = [ivf_list(fi, lst) for lst in range(fi.nlist)]
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, fi.code_size), np.uint8)
    ids, codes = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(ids, kind="stable")
    return ids[order], codes[order]


def ivf_rewrite(fi, edit) -> None:
    """Rewrite each inverted list as ``edit(ids) -> (new ids, keep mask)``, keeping entry order
    (``(None, None)``: the list stays as it is)."""
    import faiss

    il, removed = fi.invlists, 0
    for lst in range(fi.nlist):
        if not il.list_size(lst):
            continue
        ids, codes = ivf_list(fi, lst)
        new_ids, keep = edit(ids)
        if keep is None and new_ids is None:
            continue
        if keep is not None:
            new_ids, codes = new_ids[keep], np.ascontiguousarray(codes[keep])
            removed += len(ids) - len(new_ids)
            il.resize(lst, len(new_ids))
        if len(new_ids):
            ptr = faiss.swig_ptr(np.ascontiguousarray(new_ids, np.int64))
            il.update_entries(lst, 0, len(new_ids), ptr, faiss.swig_ptr(codes))
    fi.ntotal -= removed


def ivf_probe_lists(fi, codes: np.ndarray, nprobe: int) -> np.ndarray:
    """The ``nprobe`` inverted lists nearest to each query code, ``(nq, nprobe)`` (the lists an
    IVF search of these codes visits)."""
    _, lists = fi.quantizer.search(np.ascontiguousarray(codes), nprobe)
    return lists
