"""The items file of an index folder (``items.h5``): one row per indexed item.

Layout::

    /names          utf-8 (n,)   the item's name: a path relative to its images root, or split/index
    /source_index   int64 (n,)   position of the item in its source (-1: added from elsewhere)
    /labels         uint8 (n, C) multi-hot labels (only when labelled)
    /ids            int64 (n,)   stable ids, ascending (absent: ids are row positions)
    /float_row      int64 (n,)   >= 0: row of the build's embeddings file; < 0: row -1-r of the
                                 folder's kept float embeddings (absent: the row position)
    /root_id        int32 (n,)   which of ``roots`` the name is relative to (absent: all 0)
    /meta/<field>   (n,)         metadata fields: float64 (NaN = none) or utf-8 strings
    attrs: label_names (JSON), roots (JSON list of absolute folders, or absent)
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from hashindex.store.schema import as_str, write_meta

STR = h5py.string_dtype("utf-8")


def read_items(path: str | Path, *, names: bool = True) -> dict:
    """Every column of an items file (``names`` None unless asked for: large indexes read the
    names of their hits only, through :class:`ItemNames`)."""
    with h5py.File(path, "r") as f:
        n = f["names"].shape[0]
        meta = {}
        if "meta" in f:
            for key, ds in f["meta"].items():
                v = ds[()]
                meta[key] = np.array([as_str(s) for s in v], dtype=object) if ds.dtype.kind in "OS" else v
        return {
            "n": n,
            "names": [as_str(s) for s in f["names"][()]] if names else None,
            "source_index": f["source_index"][()].astype(np.int64),
            "labels": f["labels"][()] if "labels" in f else None,
            "label_names": json.loads(f.attrs.get("label_names", "null")),
            "ids": f["ids"][()].astype(np.int64) if "ids" in f else None,
            "float_row": f["float_row"][()].astype(np.int64) if "float_row" in f else None,
            "root_id": f["root_id"][()].astype(np.int32) if "root_id" in f else None,
            "roots": json.loads(f.attrs["roots"]) if "roots" in f.attrs else None,
            "meta": meta,
        }


def count_items(path: str | Path) -> tuple[int, int]:
    """``(names, label rows)`` of an items file (label rows = names when unlabelled)."""
    with h5py.File(path, "r") as f:
        n = f["names"].shape[0]
        return n, f["labels"].shape[0] if "labels" in f else n


def write_items(path: str | Path, names, source_index, *, labels=None, label_names=None, **optional) -> None:
    """Write an items file; ``optional``: ``ids``, ``float_row``, ``root_id`` arrays, ``roots``
    (list of folders) and ``meta`` (field -> array); None values are left out."""
    with h5py.File(path, "w") as f:
        f.create_dataset("names", data=np.array([str(s) for s in names], dtype=object), dtype=STR)
        f.create_dataset("source_index", data=np.asarray(source_index, np.int64))
        if labels is not None:
            f.create_dataset("labels", data=np.asarray(labels, np.uint8))
        for key in ("ids", "float_row", "root_id"):
            if optional.get(key) is not None:
                f.create_dataset(key, data=optional[key])
        write_meta(f, optional.get("meta"))
        f.attrs["label_names"] = json.dumps(label_names)
        if optional.get("roots") is not None:
            f.attrs["roots"] = json.dumps(list(optional["roots"]))


class ItemNames:
    """Item names read from an items file by the rows asked for, so that a search on a
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
