"""Compaction of a live index: the commits folded into a new base, swapped in by renames
(:mod:`hashindex.live.folder`). Ids, names, labels, roots, metadata and float embeddings are
kept; removed items (and their uploaded images) leave the folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hashindex.core.durable import fsync_dir
from hashindex.core.spec import sha256_file
from hashindex.index.faiss_access import clone_index
from hashindex.index.items import write_items
from hashindex.index.manifest import EXTRA_EMBEDDINGS, INDEX_FILE, ITEMS_FILE
from hashindex.live.commits import UPLOADS_DIR, publish
from hashindex.live.folder import compact_paths, crash_point
from hashindex.probe.artifact import PROBE_JSON, PROBE_WEIGHTS

logger = logging.getLogger(__name__)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _base_faiss(snap):
    """A faiss index of the snapshot's codes by row position (same trained quantizer for IVF)."""
    import faiss

    if snap.kind == "ivf":
        fi = clone_index(snap.faiss_index)
        fi.reset()
    else:
        fi = faiss.IndexBinaryFlat(snap.bits)
    if snap.ntotal:
        fi.add(np.ascontiguousarray(snap.codes))
    return fi


def compact_folder(live) -> None:
    """Write the new base of ``live`` (a :class:`~hashindex.live.live_index.LiveIndex` whose lock
    is held) and swap it in; the caller reloads."""
    import faiss

    from hashindex.index.mih import MIHTables

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
    write_items(
        new / ITEMS_FILE,
        snap.names,
        snap.source_index,
        labels=snap.labels,
        label_names=snap.label_names,
        ids=snap.ids,
        float_row=float_row,
        root_id=snap.root_id,
        roots=list(snap.roots),
        meta=snap.meta,
    )
    rels = [INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}"]
    if snap.kind == "mih":
        rels += MIHTables.build(np.asarray(snap.codes), m.index.tables).save(new)
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
    crash_point("compact-written")
    os.replace(path, old)
    fsync_dir(path.parent)
    crash_point("compact-between-renames")
    os.replace(new, path)
    fsync_dir(path.parent)
    crash_point("compact-swapped")
    shutil.rmtree(old)
    crash_point("compact-cleaned")
    logger.info(
        "%s: compacted %d commits into %d items in %.2fs",
        path,
        len(state.commits),
        snap.ntotal,
        time.perf_counter() - t0,
    )
