"""Compaction of a live index: the commits folded into a new base, swapped in by renames.

The new base is written whole into ``.NAME.compact-new`` beside the folder (every file fsynced),
then the folder is renamed to ``.NAME.compact-old``, the new one to ``NAME``, and the old one
deleted. A kill between the two renames leaves no ``NAME``: readers then read the complete new
folder, and the next writer (:func:`recover`) finishes the swap. Ids, names, labels and float
embeddings are kept; removed items (and their uploaded images) leave the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from hashindex.core.durable import fsync_dir
from hashindex.core.spec import sha256_file
from hashindex.index.manifest import INDEX_FILE, ITEMS_FILE
from hashindex.live.commits import EXTRA_EMBEDDINGS, UPLOADS_DIR, publish
from hashindex.probe.artifact import PROBE_JSON, PROBE_WEIGHTS

logger = logging.getLogger(__name__)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def recover(path: Path) -> None:
    """Finish or undo a compaction that was interrupted (call under the writer lock)."""
    from hashindex.live.live_index import compact_paths

    new, old = compact_paths(path)
    if not path.exists():
        if new.exists() and old.exists():
            os.replace(new, path)  # the new base was complete: roll forward
        elif old.exists():
            os.replace(old, path)
        fsync_dir(path.parent)
    for leftover in (old, new):
        if leftover.exists() and path.exists():
            shutil.rmtree(leftover)


def _base_faiss(snap):
    """A faiss index of the snapshot's codes by row position (same trained quantizer for IVF)."""
    import faiss

    if snap.index.kind == "ivf":
        fi = faiss.deserialize_index_binary(faiss.serialize_index_binary(snap.index.faiss_index))
        fi.reset()
    else:
        fi = faiss.IndexBinaryFlat(snap.bits)
    if snap.ntotal:
        fi.add(np.ascontiguousarray(snap.codes))
    return fi


def compact_folder(live) -> None:
    """Write the new base of ``live`` (a :class:`~hashindex.live.live_index.LiveIndex` whose lock is held),
    swap it in and reload."""
    import faiss

    from hashindex.live.live_index import _load, compact_paths

    snap, m, state, path = live.snapshot, live.manifest, live.state, live.path
    t0 = time.perf_counter()
    new, old = compact_paths(path)
    shutil.rmtree(new, ignore_errors=True)
    (new / "probe").mkdir(parents=True)
    faiss.write_index_binary(_base_faiss(snap), str(new / INDEX_FILE))
    for name in (PROBE_JSON, PROBE_WEIGHTS):
        shutil.copyfile(path / "probe" / name, new / "probe" / name)
    float_row = snap.float_row.copy()
    added = float_row < 0
    extra = np.ascontiguousarray(snap.extra[-1 - float_row[added]], np.float32)
    float_row[added] = -1 - np.arange(int(added.sum()), dtype=np.int64)
    with h5py.File(new / ITEMS_FILE, "w") as f:
        f.create_dataset(
            "names", data=np.array([str(s) for s in snap.names], dtype=object), dtype=h5py.string_dtype("utf-8")
        )
        f.create_dataset("source_index", data=snap.source_index)
        if snap.labels is not None:
            f.create_dataset("labels", data=snap.labels)
        f.create_dataset("ids", data=snap.ids)
        f.create_dataset("float_row", data=float_row)
        f.attrs["label_names"] = json.dumps(snap.label_names)
    rels = [INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}"]
    if len(extra):
        np.save(new / EXTRA_EMBEDDINGS, extra, allow_pickle=False)
        rels.append(EXTRA_EMBEDDINGS)
    kept = set(snap.ids.tolist())
    uploads = tuple(u for u in state.uploads if int(Path(u).stem) in kept)
    if uploads:
        (new / UPLOADS_DIR).mkdir()
        for u in uploads:
            shutil.copyfile(path / u, new / u)
        rels += list(uploads)
    files = {}
    for rel in rels:
        _fsync_file(new / rel)
        files[rel] = {"sha256": sha256_file(new / rel), "size": (new / rel).stat().st_size}
    for d in (new / "probe", new / UPLOADS_DIR, new):
        if d.exists():
            fsync_dir(d)
    new_state = replace(
        state,
        generation=state.generation + 1,
        commits=(),
        uploads=uploads,
        built=state.built or m.created,
        extra=EXTRA_EMBEDDINGS if len(extra) else None,
        compacted=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    publish(new, replace(m, ntotal=snap.ntotal, files={}, live=None), new_state, files)
    fsync_dir(path.parent)
    os.replace(path, old)
    fsync_dir(path.parent)
    os.replace(new, path)
    fsync_dir(path.parent)
    shutil.rmtree(old)
    live.manifest, live.snapshot = _load(path, live.verify)
    logger.info(
        "%s: compacted %d commits into a base of %d items in %.2fs",
        path,
        len(state.commits),
        snap.ntotal,
        time.perf_counter() - t0,
    )
