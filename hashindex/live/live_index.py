"""A live index: an index folder that takes additions and removals with stable ids, crash-safe.

The folder is a base (``index.faiss``, ``items.h5``, the probe) plus the commit log of
:mod:`hashindex.live.commits`. :func:`open_live` verifies the base and every named commit against
the manifest and replays the commits into a :class:`~hashindex.live.snapshot.Snapshot`. Writers
take the folder's lock (``INDEX_DIR.lock`` beside the folder its path resolves to, so every path to
one index shares it), catch up with commits made by other processes, write their commit durably,
publish a new manifest generation, and swap in a new snapshot. Readers never take the lock.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import numpy as np

from hashindex.core.config import DEFAULT_LOCK_WAIT
from hashindex.core.durable import OutputLock, OutputLockedError
from hashindex.core.errors import InputError
from hashindex.core.validate import check_embeddings
from hashindex.index.manifest import Manifest
from hashindex.live.commits import (
    UPLOADS_DIR,
    LiveState,
    add_commit,
    commit_bytes,
    commit_name,
    discard_unnamed,
    live_state,
    next_state,
    publish,
    remove_commit,
    write_file,
)
from hashindex.live.folder import readable_path, recover, resolve_folder
from hashindex.live.replay import load_snapshot, with_commit
from hashindex.live.snapshot import Snapshot

logger = logging.getLogger(__name__)


class LiveIndex:
    """An open live index. ``snapshot`` is what readers use; writes replace it.

    Attributes:
        path: the index folder (symbolic links resolved).
        manifest: the manifest of ``snapshot``'s generation.
        snapshot: the current immutable view (swap-only).
        verify: whether reloads check the sha256 of the files.
        images_root: where the build's images are now, when not where they were embedded.
    """

    def __init__(self, path, manifest: Manifest, snapshot: Snapshot, *, verify: bool = True, images_root=None):
        self.path, self.manifest, self.snapshot, self.verify = path, manifest, snapshot, verify
        self.images_root = images_root
        self.lock_wait = DEFAULT_LOCK_WAIT  # seconds a write waits for another writer

    @property
    def state(self) -> LiveState:
        return live_state(self.manifest)

    def disk_generation(self) -> int:
        """The generation the folder's manifest names now (read without verifying)."""
        manifest, _ = Manifest.read(readable_path(self.path))
        return live_state(manifest).generation

    def _reload(self) -> None:
        self.manifest, self.snapshot = load_snapshot(self.path, verify=self.verify, images_root=self.images_root)

    def refresh(self) -> bool:
        """Reload when another process committed (the manifest's generation moved on).

        Returns:
            True when a newer generation was loaded.
        """
        if self.disk_generation() == self.snapshot.generation:
            return False
        self._reload()
        logger.info("%s: loaded generation %d (%d items)", self.path, self.snapshot.generation, self.snapshot.ntotal)
        return True

    @contextmanager
    def writing(self):
        """Hold the folder's writer lock (waiting up to ``lock_wait`` seconds), caught up with the disk.

        Raises:
            OutputLockedError: another writer kept the lock for longer than ``lock_wait``.
        """
        lock, wait = OutputLock(self.path), self.lock_wait
        deadline = time.monotonic() + wait
        while True:
            try:
                lock.acquire()
                break
            except OutputLockedError as e:
                if time.monotonic() >= deadline:
                    raise OutputLockedError(f"{e}; gave up after waiting {wait:g}s") from None
                time.sleep(0.05)
        try:
            recover(self.path)
            self.refresh()
            discard_unnamed(self.path, self.manifest)
            yield
        finally:
            lock.release()

    def _commit(self, rel: str, state: LiveState, commit: dict, uploads: dict[str, bytes]) -> Snapshot:
        # Uploads, then the commit file, then the manifest: each durable before the next is named.
        files = {r: write_file(self.path, r, b) for r, b in uploads.items()}
        files[rel] = write_file(self.path, rel, commit_bytes(commit))
        self.manifest = publish(self.path, self.manifest, state, files)
        self.snapshot = with_commit(self.snapshot, commit, state.generation)
        return self.snapshot

    def add(
        self, embeddings, names, *, labels=None, source_index=None, uploads=None, roots=None, root_id=None, meta=None
    ):
        """Encode float embeddings with the index's probe and append them as one commit.

        Args:
            embeddings: ``(n, D)`` floats of the index's backbone.
            names: n item names (paths relative to their root, or any text).
            labels: ``(n, C)`` multi-hot labels matching the index's, or None.
            source_index: the items' indexes in their source (default -1).
            uploads: per item, ``(bytes, suffix)`` of an image to keep in the folder, or None.
            roots: folders the names are relative to, with ``root_id`` (per item; -1: none).
            meta: metadata field -> one value per item.

        Returns:
            The new items' ids.

        Raises:
            InputError: bad embeddings, names or labels.
        """
        x = check_embeddings(embeddings, self.snapshot.probe.input_dim)
        n = len(x)
        if n == 0 or len(names) != n:
            raise InputError(f"add needs one name per embedding and at least one item, got {len(names)} names for {n}")
        codes = self.snapshot.probe.encode(x)
        src = np.full(n, -1, np.int64) if source_index is None else np.asarray(source_index, np.int64)
        with self.writing():
            state = self.state
            ids = np.arange(state.next_id, state.next_id + n, dtype=np.int64)
            lab = labels
            if self.snapshot.labels is None or lab is None or np.shape(lab) != (n, self.snapshot.labels.shape[1]):
                lab = None
            blobs = {f"{UPLOADS_DIR}/{int(i)}{up[1]}": up[0] for i, up in zip(ids, uploads or ()) if up is not None}
            rel = commit_name(state.generation + 1, "add")
            new_state = next_state(state, rel, added=n, next_id=int(ids[-1]) + 1, uploads=blobs)
            commit = add_commit(ids, codes, names, lab, x, src, roots=roots, root_id=root_id, meta=meta)
            self._commit(rel, new_state, commit, blobs)
        logger.info(
            "%s: added %d items (ids %d..%d), generation %d", self.path, n, ids[0], ids[-1], new_state.generation
        )
        return ids

    def remove(self, ids) -> np.ndarray:
        """Remove items by id as one commit.

        Raises:
            InputError: no ids, or an id that is not in the index.
        """
        ids = np.unique(np.asarray(ids, np.int64).ravel())
        if len(ids) == 0:
            raise InputError("remove needs at least one id")
        with self.writing():
            self.snapshot.positions(ids)  # InputError names an unknown id
            state = self.state
            rel = commit_name(state.generation + 1, "remove")
            self._commit(rel, next_state(state, rel, removed=len(ids)), remove_commit(ids), {})
        logger.info("%s: removed %d items, generation %d", self.path, len(ids), self.state.generation)
        return ids

    def ids_of_names(self, names) -> np.ndarray:
        """The ids of every item with one of these names (InputError for a name not found)."""
        snap = self.snapshot
        wanted = {str(n) for n in names}
        hit = np.array([str(n) in wanted for n in snap.names], bool) if snap.ntotal else np.zeros(0, bool)
        found = {str(n) for n in snap.names[hit]}
        missing = sorted(wanted - found)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"no item named {missing[0]!r} in the index{more}")
        return snap.ids[hit]

    def compact(self) -> Snapshot:
        """Fold the commits into a new base (removed items leave the folder; ids stay)."""
        from hashindex.live.compact import compact_folder

        with self.writing():
            compact_folder(self)
            self._reload()
        return self.snapshot

    def info(self) -> dict:
        """What the folder holds: live and base counts, generation, next id, additions since fit."""
        s, snap, m = self.state, self.snapshot, self.manifest
        built = s.built or m.created
        age = None
        if built:
            try:
                age = round(
                    (time.time() - time.mktime(time.strptime(built, "%Y-%m-%dT%H:%M:%SZ")) + time.timezone) / 86400, 3
                )
            except ValueError:
                age = None
        return {
            "path": str(self.path),
            "kind": snap.kind,
            "bits": snap.bits,
            "ntotal": snap.ntotal,
            "base_ntotal": m.ntotal,
            "generation": s.generation,
            "commits": len(s.commits),
            "next_id": s.next_id,
            "added_since_fit": s.added_total,
            "removed_since_build": s.removed_total,
            "probe": {"method": m.probe.get("method"), "fitted_on": m.embeddings.get("n"), "age_days": age},
            "built": built,
            "compacted": s.compacted or "",
            "backbone": m.backbone.get("model"),
            "index": m.index.to_manifest(),
            "images_root": snap.roots[0] or "",
        }


def open_live(path: str | os.PathLike, *, verify: bool = True, images_root: str | None = None) -> LiveIndex:
    """Open an index folder as a live index: verify, replay its commits. The path is resolved
    once (links followed), so every path to one index locks and compacts the same folder.

    Raises:
        InputError: not an index folder.
        IntegrityError: a damaged base or commit, or a commit log that contradicts itself.
    """
    p = resolve_folder(path)
    manifest, snap = load_snapshot(p, verify=verify, images_root=images_root)
    return LiveIndex(p, manifest, snap, verify=verify, images_root=images_root)
