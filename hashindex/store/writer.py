"""Writing an embeddings file crash-safely and resumably.

How a file is written, so that a crash at any moment (SIGKILL, power loss aside) loses at most
the last uncommitted batches and never leaves a readable but wrong file:

- ``OUT.lock``: an exclusive POSIX lock held by the one writer; a second writer fails at once.
  The kernel drops the lock when its holder dies, so a killed run never blocks the next one.
- ``OUT.partial/``: the resume folder (:mod:`hashindex.store.resume`): settings, then one
  durable shard per commit.
- :meth:`EmbeddingsWriter.finish` assembles the shards into ``OUT.partial/assembled.h5``,
  fsyncs it, renames it to ``OUT`` (atomic) and fsyncs the parent folder, then removes the
  resume folder and the lock file. A file named ``OUT`` is therefore always complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from hashindex.core.durable import OutputLock, fsync_dir, publish_file, write_durably
from hashindex.core.errors import InputError
from hashindex.core.version import __version__
from hashindex.store.assemble import assemble
from hashindex.store.resume import (
    ASSEMBLED,
    ITEMS,
    RESUME_FORMAT,
    SETTINGS,
    Shard,
    changed_item,
    partial_path,
    read_settings,
    remove_resume_folder,
    scan_shards,
    shard_meta,
)
from hashindex.store.schema import (
    jsonable,
    text_array,
)

logger = logging.getLogger(__name__)


class EmbeddingsWriter:
    """Writes an embeddings file crash-safely and resumably; published by :meth:`finish`.

    Batches given to :meth:`append` are made durable as shard files in ``OUT.partial/`` (see the
    module docstring), either at once (``commit_seconds=0``) or at most every ``commit_seconds``.
    Constructing a writer for an output whose resume folder holds progress from the same settings
    resumes it (:attr:`items_done` says where); other settings are refused.

    Args:
        path: the output file.
        n: number of items of the source (an upper bound on the rows).
        dim: embedding width.
        views: augmented views per item (0 for none).
        label_dim: label columns (0 for none).
        attrs: provenance attributes; a resume must present the same ones.
        lock: an :class:`OutputLock` already held for ``path`` (taken here when None).
        commit_seconds: make appended batches durable when this long has passed since the last
            commit (0: after every batch).
        item_keys: what identifies each item of the source (kept in the resume folder, so a
            resume refused for a changed source can name the first item that differs).

    Raises:
        OutputLockedError: another process writes the same output.
        InputError: the output exists, or the resume folder is from other settings or not ours.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n: int,
        dim: int,
        views: int,
        label_dim: int,
        attrs: dict,
        lock: OutputLock | None = None,
        commit_seconds: float = 0.0,
        item_keys: list[str] | None = None,
        item_meta=None,
    ):
        self.path = Path(path)
        self.work = partial_path(path)
        self.n, self.dim, self.views, self.label_dim = int(n), int(dim), int(views), int(label_dim)
        self.attrs = {k: jsonable(v) for k, v in attrs.items()}
        self.commit_seconds = float(commit_seconds)
        self.item_keys, self.item_meta = item_keys, item_meta  # item_meta: names -> metadata columns
        self._own_lock = lock is None
        self.lock = lock if lock is not None else OutputLock(path).acquire()
        self._buffer: list[dict] = []
        self._buffer_attrs: dict = {}
        self._last_commit = time.monotonic()
        self._closed = False
        try:
            if self.path.exists():
                raise InputError(f"{self.path} already exists: remove it or choose another output path")
            self._open_work()
        except BaseException:
            self._release()
            raise

    # -- resume folder -------------------------------------------------------------------------

    def _settings(self) -> dict:
        return {
            "format": RESUME_FORMAT,
            "n": self.n,
            "dim": self.dim,
            "views": self.views,
            "label_dim": self.label_dim,
            "attrs": self.attrs,
        }

    def _open_work(self) -> None:
        w = self.work
        if w.exists() and not w.is_dir():
            raise InputError(
                f"{w} is not a resume folder (left by an older hashindex, or another program): delete it to start over"
            )
        settings = None
        if w.is_dir():
            settings = read_settings(w)
            if settings is None:
                stray = [p.name for p in w.iterdir() if not p.name.startswith(".tmp-") and p.name != ITEMS]
                if stray:
                    raise InputError(
                        f"{w} holds files hashindex did not write ({', '.join(stray[:3])}): delete it to start over"
                    )
        if settings is not None:
            mine = json.loads(json.dumps(self._settings()))
            diff = [k for k in ("format", "n", "dim", "views", "label_dim") if settings.get(k) != mine[k]]
            theirs_attrs = settings.get("attrs") or {}
            diff += [k for k in mine["attrs"] if theirs_attrs.get(k) != mine["attrs"][k]]
            if "source_digest" in diff:
                raise InputError(
                    f"{w} is left from a run over another version of the source: {changed_item(w, self.item_keys)}"
                )
            if diff:
                raise InputError(
                    f"{w} is left from a run with other settings (differs in: {', '.join(diff)}); delete it "
                    "to start over, or re-run the original command to resume it"
                )
            self.created = settings.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._discard_stray()
            self.shards = scan_shards(self.work, self.n)
            self._committed_attrs = shard_meta(self.shards[-1]) if self.shards else {}
            if self.shards:
                logger.info("resuming %s at item %d (%d rows)", self.path, self.committed_items, self.committed_rows)
            return
        w.mkdir(exist_ok=True)
        self._discard_stray()
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc = dict(self._settings(), created=self.created, hashindex_version=__version__)
        if self.item_keys is not None:
            write_durably(
                w / ITEMS,
                lambda fh: fh.write("".join(k + "\n" for k in self.item_keys).encode("utf-8", "surrogateescape")),
            )
        write_durably(w / SETTINGS, lambda fh: fh.write((json.dumps(doc, sort_keys=True) + "\n").encode()))
        fsync_dir(w.parent)
        self.shards, self._committed_attrs = [], {}

    def _discard_stray(self) -> None:
        for p in self.work.iterdir():
            if p.name.startswith(".tmp-") or p.name == ASSEMBLED:
                p.unlink(missing_ok=True)

    # -- progress ------------------------------------------------------------------------------

    @property
    def committed_items(self) -> int:
        """Items made durable (a resume starts here)."""
        return self.shards[-1].end if self.shards else 0

    @property
    def committed_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def items_done(self) -> int:
        """Items appended so far (committed or buffered)."""
        return self._buffer[-1]["end"] if self._buffer else self.committed_items

    @property
    def rows(self) -> int:
        """Rows appended so far (committed or buffered)."""
        return self.committed_rows + sum(len(b["source_index"]) for b in self._buffer)

    def attr(self, name: str, default=None):
        """The latest value of an attribute set by :meth:`append` (or given at creation)."""
        for d in (self._buffer_attrs, self._committed_attrs, self.attrs):
            if name in d:
                return d[name]
        return default

    def append(self, *, items_done: int, embeddings, views, labels, names, source_index, failures=(), **attrs) -> None:
        """Add the rows of one batch, covering every item below ``items_done``.

        Args:
            items_done: items of the source handled once this batch is in (rows + failures).
            embeddings: ``(m, dim)`` float32 (None when ``m == 0``).
            views: ``(m, V, dim)`` or None.
            labels: ``(m, C)`` uint8 or None.
            names: m names.
            source_index: m source positions (increasing, below ``items_done``).
            failures: ``(source_index, name, error class, message)`` tuples.
            attrs: attributes to record (e.g. ``embed_seconds``); the latest value wins.

        Raises:
            ValueError: shapes that do not fit the file, or ``items_done`` not advancing.
        """
        m = len(names)
        start = self.items_done
        items_done = int(items_done)
        if items_done <= start:
            if m or failures:
                raise ValueError(f"items_done must advance past {start}, got {items_done}")
            self._buffer_attrs.update({k: jsonable(v) for k, v in attrs.items()})
            return  # nothing new: an empty shard would break the chain of items
        if items_done > self.n:
            raise ValueError(f"items_done {items_done} exceeds the {self.n} items of the source")
        idx = np.asarray(source_index, dtype=np.int64).reshape(-1)
        emb = np.zeros((0, self.dim), np.float32) if m == 0 else np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape != (m, self.dim) or len(idx) != m:
            raise ValueError(
                f"a batch of {m} names needs embeddings of shape ({m}, {self.dim}) and {m} source indices, got {emb.shape} and {len(idx)}"
            )
        if m and (idx.min() < start or idx.max() >= items_done or (np.diff(idx) <= 0).any()):
            raise ValueError(f"source indices must increase within [{start}, {items_done})")
        batch = {"start": start, "end": items_done, "embeddings": emb, "names": text_array(names), "source_index": idx}
        if self.views:
            v = (
                np.zeros((0, self.views, self.dim), np.float32)
                if m == 0
                else np.ascontiguousarray(views, dtype=np.float32)
            )
            if v.shape != (m, self.views, self.dim):
                raise ValueError(f"views must have shape ({m}, {self.views}, {self.dim}), got {v.shape}")
            batch["views"] = v
        if self.label_dim:
            lab = np.zeros((0, self.label_dim), np.uint8) if m == 0 else np.ascontiguousarray(labels, dtype=np.uint8)
            if lab.shape != (m, self.label_dim):
                raise ValueError(f"labels must have shape ({m}, {self.label_dim}), got {lab.shape}")
            batch["labels"] = lab
        fails = list(failures)
        batch["fail_index"] = np.array([int(f[0]) for f in fails], dtype=np.int64)
        for j, key in ((1, "fail_name"), (2, "fail_error"), (3, "fail_message")):
            batch[key] = text_array(f[j] for f in fails)
        self._buffer.append(batch)
        self._buffer_attrs.update({k: jsonable(v) for k, v in attrs.items()})
        if self.commit_seconds <= 0 or time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        """Make the appended batches durable as one shard (a no-op when nothing is pending)."""
        if not self._buffer:
            return
        b = self._buffer
        start, end = b[0]["start"], b[-1]["end"]
        arrays = {k: np.concatenate([x[k] for x in b]) for k in b[0] if k not in ("start", "end")}
        meta = dict(self._committed_attrs, **self._buffer_attrs)
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
        arrays["range"] = np.array([start, end], dtype=np.int64)
        assert not any(a.dtype.hasobject for a in arrays.values())  # object arrays would need pickle
        path = self.work / f"shard-{start:012d}-{end:012d}.npz"
        write_durably(path, lambda fh: np.savez(fh, **arrays))
        self.shards.append(Shard(start, end, len(arrays["source_index"]), path))
        self._committed_attrs = meta
        self._buffer, self._buffer_attrs = [], {}
        self._last_commit = time.monotonic()

    # -- publishing ----------------------------------------------------------------------------

    def finish(self, **attrs) -> Path:
        """Commit what is pending, assemble the HDF5 file, fsync it and rename it to the output
        path atomically; then remove the resume folder and the lock. The writer's ``item_meta``
        (a function of the rows' names giving their metadata columns) fills ``/meta``.

        Raises:
            IntegrityError: a progress shard turned out to be corrupt (it is removed, so the same
                command re-run embeds its items again).
        """
        self.commit()
        tmp = self.work / ASSEMBLED
        tmp.unlink(missing_ok=True)
        meta = dict(self._committed_attrs, **{k: jsonable(v) for k, v in attrs.items()})
        rows = self.committed_rows

        def fill(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                assemble(f, self, rows, meta, self.item_meta)

        publish_file(fill, self.path, tmp)
        self._cleanup()
        return self.path

    def _cleanup(self) -> None:
        remove_resume_folder(self.work)
        self._release(remove=True)
        self._closed = True

    def _release(self, remove: bool = False) -> None:
        if self._own_lock:
            self.lock.release(remove=remove)

    def close(self) -> None:
        """Stop writing without publishing: commit what is pending (so a re-run resumes after it)
        and release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self.commit()
        finally:
            self._release()
