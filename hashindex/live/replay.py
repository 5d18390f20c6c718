"""Snapshots from folders: the base as loaded, then each named commit applied in order.

Loading retries when the folder was swapped by a compaction while it was being read (the old
folder's files are deleted once the new one is in place): a reader gets the complete old or new
index, never a false report of corruption.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from hashindex.core.errors import HashIndexError, InputError, IntegrityError
from hashindex.index.faiss_access import clone_index, ivf_rewrite, stored_codes
from hashindex.index.items import ItemNames
from hashindex.index.load import HashIndex, load_index
from hashindex.index.manifest import ITEMS_FILE, Manifest
from hashindex.live.commits import live_state, read_commit
from hashindex.live.folder import readable_path
from hashindex.live.snapshot import Snapshot, source_root

logger = logging.getLogger(__name__)
OPEN_ATTEMPTS = 20  # swaps a reader may meet in a row before giving up


def base_snapshot(hi: HashIndex, generation: int, extra: np.ndarray | None, images_root: str | None = None) -> Snapshot:
    """The snapshot of a loaded base folder, before any commit is replayed.

    A fresh build (ids = row positions) is searched as loaded (memory-mapped when
    ``load_index(mmap=True)`` opened it, its codes a view of the faiss index: no copy of them).
    Names are read from the items file by the rows asked for (:class:`~hashindex.index.items.ItemNames`).
    """
    from hashindex.index.faiss_access import flat_codes_view

    items = hi.items(names=False)
    n = hi.ntotal
    ids = items["ids"] if items["ids"] is not None else np.arange(n, dtype=np.int64)
    float_row = items["float_row"] if items["float_row"] is not None else np.arange(n, dtype=np.int64)
    if len(ids) != n or (n and (np.diff(ids) <= 0).any()) or len(float_row) != n:
        raise IntegrityError(f"{hi.path}: {ITEMS_FILE} has ids that are not strictly ascending or not one per item")
    fi = hi.faiss_index
    identity = n == 0 or (ids[0] == 0 and ids[-1] == n - 1)  # strictly ascending: then ids == positions
    if hi.kind == "ivf":
        codes = stored_codes(fi)
        fi.make_direct_map(False)  # stored_codes made one; lists are edited directly from now on
        if not identity:
            fi = clone_index(fi)  # a memory-mapped index's lists are read-only
            ivf_rewrite(fi, lambda lid: (ids[lid], None))
    else:
        codes = flat_codes_view(fi)
    roots = list(items["roots"]) if items["roots"] is not None else [source_root(hi.manifest.embeddings)]
    if images_root is not None:
        roots[0] = os.path.abspath(images_root)
    dim = hi.probe.input_dim
    return Snapshot(
        generation=generation,
        base=hi,
        ids=ids,
        codes=codes,
        names=ItemNames(hi.path / ITEMS_FILE, n),
        labels=items["labels"],
        source_index=items["source_index"],
        float_row=float_row,
        extra=np.zeros((0, dim), np.float32) if extra is None else extra,
        label_names=items["label_names"],
        embeddings_path=hi.manifest.embeddings.get("path") or "",
        roots=tuple(roots),
        root_id=items["root_id"],
        meta=items["meta"],
        faiss_index=fi,
    )


def _merged_meta(snap: Snapshot, commit: dict, n_new: int) -> dict:
    """The snapshot's metadata with the commit's rows appended; a field one side lacks is
    empty there (NaN for numbers, "" for text)."""
    new = {k[len("meta__") :]: v for k, v in commit.items() if k.startswith("meta__")}
    out = {}
    for key in sorted(set(snap.meta) | set(new)):
        old = snap.meta.get(key)
        add = new.get(key)
        text = (old is not None and old.dtype.kind in "OUS") or (add is not None and add.dtype.kind in "OUS")
        blank = (lambda m: np.array([""] * m, dtype=object)) if text else (lambda m: np.full(m, np.nan))
        old = blank(snap.ntotal) if old is None else (old.astype(object) if text else old)
        add = (
            blank(n_new)
            if add is None
            else (np.array([str(s) for s in add], dtype=object) if text else add.astype(np.float64))
        )
        out[key] = np.concatenate([old, add])
    return out


def with_commit(snap: Snapshot, commit: dict, generation: int) -> Snapshot:
    """A new snapshot with one commit applied (the old one is untouched).

    Raises:
        IntegrityError: an add that reuses an id, or a remove of an unknown id.
    """
    fi = None
    if commit["kind"] == "add":
        new_ids = commit["ids"]
        if len(new_ids) and ((np.diff(new_ids) <= 0).any() or (snap.ntotal and new_ids[0] <= snap.ids[-1])):
            raise IntegrityError("a commit adds ids that are not new and ascending (a duplicated id)")
        if commit["codes"].shape[1] != snap.codes.shape[1] or commit["embeddings"].shape[1] != snap.probe.input_dim:
            raise IntegrityError("a commit holds codes or embeddings of another width than the index")
        n_new = len(new_ids)
        labels = snap.labels
        if labels is not None:
            same = commit["labels"].shape[1] == labels.shape[1]
            labels = np.concatenate(
                [labels, commit["labels"] if same else np.zeros((n_new, labels.shape[1]), np.uint8)]
            )
        extra = np.concatenate([snap.extra, commit["embeddings"]])
        roots, root_id = snap.roots, snap.root_id
        if "roots" in commit and len(commit["roots"]):
            roots = snap.roots + tuple(str(r) for r in commit["roots"])
            base_ids = np.zeros(snap.ntotal, np.int32) if root_id is None else root_id
            local = commit["root_id"].astype(np.int32)
            root_id = np.concatenate([base_ids, np.where(local >= 0, local + len(snap.roots), -1).astype(np.int32)])
        elif root_id is not None or n_new:
            base_ids = np.zeros(snap.ntotal, np.int32) if root_id is None else root_id
            root_id = np.concatenate([base_ids, np.full(n_new, -1, np.int32)])
        changes = dict(
            ids=np.concatenate([snap.ids, new_ids]),
            codes=np.concatenate([snap.codes, commit["codes"]]),
            names=np.concatenate([snap.names, np.array([str(s) for s in commit["names"]], dtype=object)]),
            labels=labels,
            extra=extra,
            source_index=np.concatenate([snap.source_index, commit["source_index"]]),
            float_row=np.concatenate([snap.float_row, -1 - np.arange(len(snap.extra), len(extra), dtype=np.int64)]),
            roots=roots,
            root_id=root_id,
            meta=_merged_meta(snap, commit, n_new),
        )
        if snap.kind == "ivf":
            fi = clone_index(snap.faiss_index)
            fi.add_with_ids(np.ascontiguousarray(commit["codes"]), np.ascontiguousarray(new_ids))
    else:
        removed = np.unique(commit["removed"])
        try:
            pos = snap.positions(removed)
        except InputError as e:
            raise IntegrityError(f"a remove commit names an id that is not in the index: {e}") from None
        keep = np.ones(snap.ntotal, bool)
        keep[pos] = False
        changes = dict(
            ids=snap.ids[keep],
            codes=snap.codes[keep],
            names=snap.names[keep],
            labels=None if snap.labels is None else snap.labels[keep],
            float_row=snap.float_row[keep],
            source_index=snap.source_index[keep],
            root_id=None if snap.root_id is None else snap.root_id[keep],
            meta={k: v[keep] for k, v in snap.meta.items()},
        )
        if snap.kind == "ivf":
            fi = clone_index(snap.faiss_index)

            def drop(lid):
                keep = ~np.isin(lid, removed)
                return (lid, keep) if not keep.all() else (None, None)

            ivf_rewrite(fi, drop)
    return replace(snap, generation=generation, faiss_index=fi, **changes)


def _load(path: Path, verify: bool, images_root: str | None) -> tuple[Manifest, Snapshot]:
    hi = load_index(path, verify=verify, mmap=True)  # read-only: edits make new faiss indexes
    manifest = hi.manifest  # checked against its sha256 and the files by load_index
    state = live_state(manifest)
    extra = None
    if state.extra:
        try:
            extra = np.load(path / state.extra, allow_pickle=False)
        except Exception as e:
            raise IntegrityError(f"{path / state.extra} is unreadable: {type(e).__name__}: {e}") from None
    snap = base_snapshot(hi, state.generation - len(state.commits), extra, images_root)
    for rel in state.commits:
        snap = with_commit(snap, read_commit(path, rel), snap.generation + 1)
    if snap.ntotal and snap.ids[-1] >= state.next_id:
        raise IntegrityError(f"{path}: next_id {state.next_id} is not above the largest id {int(snap.ids[-1])}")
    return manifest, snap


def _folder_identity(path: Path):
    """Which folder a read of ``path`` reads: its path (the index's, or a compaction sibling's
    during the swap) and the folder itself (a swap puts another folder under the same name)."""
    folder = readable_path(path)
    try:
        st = os.stat(folder)
        return str(folder), st.st_dev, st.st_ino
    except OSError:
        return str(folder), None, None


def load_snapshot(path: Path, *, verify: bool = True, images_root: str | None = None) -> tuple[Manifest, Snapshot]:
    """Load the folder at ``path`` (or, during a compaction's swap, the complete one beside it)
    and replay its commits.

    Raises:
        InputError: not an index folder.
        IntegrityError: a damaged base or commit, or a commit log that contradicts itself.
    """
    for attempt in range(OPEN_ATTEMPTS):
        before = _folder_identity(path)
        try:
            return _load(readable_path(path), verify, images_root)
        except (HashIndexError, OSError) as e:
            # A compaction swapped the folder while it was read: read the complete one now there.
            if attempt + 1 < OPEN_ATTEMPTS and _folder_identity(path) != before:
                logger.info("%s changed while it was read (%s): reading it again", path, e)
                continue
            raise
    raise AssertionError("unreachable")
