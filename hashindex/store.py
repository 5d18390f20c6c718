"""The embeddings file: an HDF5 schema for frozen-backbone features, views, labels and provenance.

Layout (schema version 1)::

    /embeddings     float32 (n, D)     eval-view features, row i is item id i
    /views          float32 (n, V, D)  augmented views (only when V > 0)
    /labels         uint8   (n, C)     multi-hot labels (only when the source has labels)
    /names          utf-8   (n,)       path relative to the source, or "split/index"
    /source_index   int64   (n,)       position of the item in its source
    /failures       compound (m,)      items that could not be decoded: source_index, name, error, message
    attrs: schema_version, hashindex_version, complete, items_done, rows, backbone (JSON),
           augment (JSON), views, seed, source (JSON), label_names (JSON), created,
           embed_seconds (wall time of the forward passes, summed over resumed runs), device,
           checksums (JSON: sha256 of each dataset's contents, checked by :meth:`Embeddings.verify`)

How a file is written, so that a crash at any moment (SIGKILL, power loss aside) loses at most
the last uncommitted batches and never leaves a readable but wrong file:

- ``OUT.lock``: an exclusive POSIX lock held by the one writer; a second writer fails at once.
  The kernel drops the lock when its holder dies, so a killed run never blocks the next one.
- ``OUT.partial/``: the resume folder. ``settings.json`` (what is being embedded) is written
  first; then every commit writes one shard ``shard-<start>-<end>.npz`` (plain ``.npy`` arrays,
  no pickle) holding the rows and failures of items ``start..end-1``. A shard is written to a
  temporary name, flushed, fsynced and renamed, then the folder is fsynced, so a shard that has
  its final name is whole. The shards that form an unbroken chain from item 0 are the progress;
  anything else (temporary files, a half-assembled file) is discarded on resume.
- :meth:`EmbeddingsWriter.finish` assembles the shards into ``OUT.partial/assembled.h5``,
  fsyncs it, renames it to ``OUT`` (atomic) and fsyncs the parent folder, then removes the
  resume folder and the lock file. A file named ``OUT`` is therefore always complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .backbone import BackboneSpec
from .errors import InputError, IntegrityError

try:  # POSIX only; elsewhere the output is not protected against a second writer
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESUME_FORMAT = 1
_STR = h5py.string_dtype("utf-8")
_FAIL = np.dtype([("source_index", "<i8"), ("name", _STR), ("error", _STR), ("message", _STR)])
_SETTINGS = "settings.json"
_ASSEMBLED = "assembled.h5"
_SHARD_RE = re.compile(r"^shard-(\d{12})-(\d{12})\.npz$")
_DATASETS = ("embeddings", "views", "labels", "names", "source_index")


class OutputLockedError(InputError):
    """Another process is writing the same output file."""


def partial_path(path: str | os.PathLike) -> Path:
    """The resume folder of an output file: ``OUT.partial``."""
    return Path(str(path) + ".partial")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output file: ``OUT.lock``."""
    return Path(str(path) + ".lock")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _write_durably(path: Path, write) -> None:
    """Write a file under a temporary name, flush, fsync, rename over ``path``, fsync the folder."""
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


_HELD: set[str] = set()  # lock files held by this process (POSIX locks do not exclude their owner)


class OutputLock:
    """An exclusive POSIX lock (``fcntl.lockf``) on ``OUT.lock``, taken without waiting.

    POSIX record locks belong to a process: the kernel drops them when it dies (even by SIGKILL)
    and they are not inherited by forked children such as data-loader workers, so a killed run
    never blocks the next one. The lock file holds the owner's pid for the error message; the
    owner removes it when the output is published, and a leftover one is simply taken again.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = lock_path(out)
        self.fd: int | None = None
        self._key = os.path.join(os.path.realpath(self.path.parent), self.path.name)

    def _busy(self, holder: str) -> OutputLockedError:
        who = f"process {holder}" if holder.isdigit() else "another process"
        return OutputLockedError(
            f"{who} is already writing {self.out} (lock {self.path} is held): "
            "wait for it to finish or stop it, then re-run to resume"
        )

    def acquire(self) -> "OutputLock":
        """Take the lock.

        Raises:
            OutputLockedError: another process (or another writer in this one) holds it.
        """
        if fcntl is None:  # pragma: no cover
            logger.warning("no fcntl on this platform: %s is not protected against a second writer", self.out)
            return self
        if self._key in _HELD:
            raise self._busy(str(os.getpid()))
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise InputError(f"cannot create the lock file {self.path}: {e.strerror}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                finally:
                    os.close(fd)
                raise self._busy(holder) from None
            # A finishing owner unlinks the lock file: make sure we locked the file that is there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD.add(self._key)
        return self

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; ``remove`` also deletes the lock file (done once the output is published)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        _HELD.discard(self._key)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def _clean_text(s) -> str:
    """A str that encodes to UTF-8 (file names with undecodable bytes come as surrogates)."""
    s = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _text_array(items) -> np.ndarray:
    items = [_clean_text(s) for s in items]
    return np.array(items, dtype=str) if items else np.zeros((0,), dtype="<U1")


@dataclass
class _Shard:
    start: int
    end: int
    rows: int
    path: Path


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

    Raises:
        OutputLockedError: another process writes the same output.
        InputError: the output exists, or the resume folder is from other settings or not ours.
    """

    def __init__(
        self, path: str | os.PathLike, *, n: int, dim: int, views: int, label_dim: int, attrs: dict,
        lock: OutputLock | None = None, commit_seconds: float = 0.0,
    ):  # fmt: skip
        self.path = Path(path)
        self.work = partial_path(path)
        self.n, self.dim, self.views, self.label_dim = int(n), int(dim), int(views), int(label_dim)
        self.attrs = {k: _jsonable(v) for k, v in attrs.items()}
        self.commit_seconds = float(commit_seconds)
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
        return {"format": RESUME_FORMAT, "n": self.n, "dim": self.dim, "views": self.views, "label_dim": self.label_dim, "attrs": self.attrs}

    def _open_work(self) -> None:
        w = self.work
        if w.exists() and not w.is_dir():
            raise InputError(
                f"{w} is not a resume folder (left by an older hashindex, or another program): "
                "delete it to start over"
            )
        settings = None
        if w.is_dir():
            settings = _read_settings(w)
            if settings is None:
                stray = [p.name for p in w.iterdir() if not p.name.startswith(".tmp-")]
                if stray:
                    raise InputError(f"{w} holds files hashindex did not write ({', '.join(stray[:3])}): delete it to start over")
        if settings is not None:
            mine = json.loads(json.dumps(self._settings()))
            diff = [k for k in ("format", "n", "dim", "views", "label_dim") if settings.get(k) != mine[k]]
            theirs_attrs = settings.get("attrs") or {}
            diff += [k for k in mine["attrs"] if theirs_attrs.get(k) != mine["attrs"][k]]
            if diff:
                raise InputError(
                    f"{w} is left from a run with other settings (differs in: {', '.join(diff)}); delete it "
                    "to start over, or re-run the original command to resume it"
                )
            self.created = settings.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._discard_stray()
            self._shards = self._scan_shards()
            self._committed_attrs = self._shard_meta(self._shards[-1]) if self._shards else {}
            if self._shards:
                logger.info("resuming %s at item %d (%d rows)", self.path, self.committed_items, self.committed_rows)
            return
        w.mkdir(exist_ok=True)
        self._discard_stray()
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc = dict(self._settings(), created=self.created, hashindex_version=__version__)
        _write_durably(w / _SETTINGS, lambda fh: fh.write((json.dumps(doc, sort_keys=True) + "\n").encode()))
        _fsync_dir(w.parent)
        self._shards, self._committed_attrs = [], {}

    def _discard_stray(self) -> None:
        for p in self.work.iterdir():
            if p.name.startswith(".tmp-") or p.name == _ASSEMBLED:
                p.unlink(missing_ok=True)

    def _scan_shards(self) -> list[_Shard]:
        """The readable shards that chain from item 0; every other shard file is deleted."""
        found: dict[int, list[tuple[int, Path]]] = {}
        for p in self.work.iterdir():
            m = _SHARD_RE.match(p.name)
            if m:
                found.setdefault(int(m.group(1)), []).append((int(m.group(2)), p))
        chain: list[_Shard] = []
        pos = 0
        while pos in found:
            best = None
            for end, p in sorted(found.pop(pos), reverse=True):
                rows = _shard_rows(p) if best is None and pos < end <= self.n else None
                if rows is not None:
                    best = _Shard(pos, end, rows, p)
                else:
                    logger.warning("discarding progress file %s (unreadable, out of range or superseded)", p)
                    p.unlink(missing_ok=True)
            if best is None:
                break
            chain.append(best)
            pos = best.end
        for rest in found.values():  # not part of the chain from item 0
            for _, p in rest:
                p.unlink(missing_ok=True)
        return chain

    @staticmethod
    def _shard_meta(shard: _Shard) -> dict:
        try:
            with np.load(shard.path, allow_pickle=False) as z:
                return json.loads(str(z["meta"][()]))
        except Exception:  # noqa: BLE001 - an unreadable shard is caught at assembly
            return {}

    # -- progress ------------------------------------------------------------------------------

    @property
    def committed_items(self) -> int:
        """Items made durable (a resume starts here)."""
        return self._shards[-1].end if self._shards else 0

    @property
    def committed_rows(self) -> int:
        return sum(s.rows for s in self._shards)

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
            self._buffer_attrs.update({k: _jsonable(v) for k, v in attrs.items()})
            return  # nothing new: an empty shard would break the chain of items
        if items_done > self.n:
            raise ValueError(f"items_done {items_done} exceeds the {self.n} items of the source")
        idx = np.asarray(source_index, dtype=np.int64).reshape(-1)
        emb = np.zeros((0, self.dim), np.float32) if m == 0 else np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape != (m, self.dim) or len(idx) != m:
            raise ValueError(f"a batch of {m} names needs embeddings of shape ({m}, {self.dim}) and {m} source indices, got {emb.shape} and {len(idx)}")
        if m and (idx.min() < start or idx.max() >= items_done or (np.diff(idx) <= 0).any()):
            raise ValueError(f"source indices must increase within [{start}, {items_done})")
        batch = {"start": start, "end": items_done, "embeddings": emb, "names": _text_array(names), "source_index": idx}
        if self.views:
            v = np.zeros((0, self.views, self.dim), np.float32) if m == 0 else np.ascontiguousarray(views, dtype=np.float32)
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
            batch[key] = _text_array(f[j] for f in fails)
        self._buffer.append(batch)
        self._buffer_attrs.update({k: _jsonable(v) for k, v in attrs.items()})
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
        _write_durably(path, lambda fh: np.savez(fh, **arrays))
        self._shards.append(_Shard(start, end, len(arrays["source_index"]), path))
        self._committed_attrs = meta
        self._buffer, self._buffer_attrs = [], {}
        self._last_commit = time.monotonic()

    # -- publishing ----------------------------------------------------------------------------

    def finish(self, **attrs) -> Path:
        """Commit what is pending, assemble the HDF5 file, fsync it and rename it to the output
        path atomically; then remove the resume folder and the lock.

        Raises:
            IntegrityError: a progress shard turned out to be corrupt (it is removed, so the same
                command re-run embeds its items again).
        """
        self.commit()
        tmp = self.work / _ASSEMBLED
        tmp.unlink(missing_ok=True)
        meta = dict(self._committed_attrs, **{k: _jsonable(v) for k, v in attrs.items()})
        rows = self.committed_rows
        try:
            with h5py.File(tmp, "w") as f:
                self._assemble(f, rows, meta)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._cleanup()
        return self.path

    def _assemble(self, f: h5py.File, rows: int, meta: dict) -> None:
        # Contiguous datasets (the size is known): readers can memory-map /embeddings.
        dim = self.dim
        f.create_dataset("embeddings", (rows, dim), "f4")
        if self.views:
            f.create_dataset("views", (rows, self.views, dim), "f4")
        if self.label_dim:
            f.create_dataset("labels", (rows, self.label_dim), "u1")
        f.create_dataset("names", (rows,), _STR)
        f.create_dataset("source_index", (rows,), "i8")
        hashes = {k: hashlib.sha256() for k in _DATASETS if k in f}
        failures = []
        r = 0
        for i, s in enumerate(self._shards):
            try:
                with np.load(s.path, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
                _check_shard(data, s, self)
            except Exception as e:  # noqa: BLE001 - any damage means the shard cannot be trusted
                for later in self._shards[i:]:
                    later.path.unlink(missing_ok=True)
                raise IntegrityError(
                    f"progress file {s.path} is corrupt ({type(e).__name__}: {e}); it was removed: "
                    f"re-run the same command to embed items {s.start} onwards again"
                ) from None
            m = len(data["source_index"])
            for k in hashes if m else ():
                arr = data[k]
                if k == "names":
                    f[k][r : r + m] = arr.tolist()
                    for name in arr.tolist():
                        hashes[k].update(name.encode("utf-8") + b"\n")
                else:
                    f[k][r : r + m] = arr
                    hashes[k].update(np.ascontiguousarray(arr).tobytes())
            failures += list(zip(data["fail_index"].tolist(), data["fail_name"].tolist(), data["fail_error"].tolist(), data["fail_message"].tolist()))
            r += m
        fd = f.create_dataset("failures", (len(failures),), _FAIL, maxshape=(None,), chunks=(64,))
        if failures:
            fd[:] = np.array(failures, dtype=_FAIL)
        for k, v in self.attrs.items():
            f.attrs[k] = v
        for k, v in meta.items():
            if v is not None:
                f.attrs[k] = v
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["hashindex_version"] = __version__
        f.attrs["items_done"] = self.committed_items
        f.attrs["rows"] = rows
        f.attrs["created"] = self.created
        f.attrs["checksums"] = json.dumps({k: h.hexdigest() for k, h in hashes.items()}, sort_keys=True)
        f.attrs["complete"] = True

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


def _read_settings(work: Path) -> dict | None:
    try:
        doc = json.loads((work / _SETTINGS).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _shard_rows(path: Path) -> int | None:
    """Rows of a shard from its small ``source_index`` member, or None when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["source_index"].shape[0])
    except Exception:  # noqa: BLE001 - BadZipFile, KeyError, ValueError, OSError...
        return None


def _check_shard(data: dict, s: _Shard, w: EmbeddingsWriter) -> None:
    m = len(data["source_index"])
    if [int(v) for v in data["range"]] != [s.start, s.end] or m != s.rows:
        raise ValueError(f"holds items {data['range'].tolist()} and {m} rows, its name says {s.start}..{s.end}")
    want = {"embeddings": (m, w.dim), "names": (m,)}
    if w.views:
        want["views"] = (m, w.views, w.dim)
    if w.label_dim:
        want["labels"] = (m, w.label_dim)
    for k, shape in want.items():
        if data[k].shape != shape:
            raise ValueError(f"{k} has shape {data[k].shape}, expected {shape}")


def remove_resume_folder(work: Path) -> None:
    """Delete a resume folder: shards first, the settings last, so an interrupted removal still
    leaves a folder that is recognised as ours."""
    if not work.is_dir():
        return
    for p in work.iterdir():
        if p.name != _SETTINGS:
            p.unlink(missing_ok=True)
    (work / _SETTINGS).unlink(missing_ok=True)
    work.rmdir()
    _fsync_dir(work.parent)


def clean_published(path: str | os.PathLike, attrs: dict, *, clean: bool = True) -> bool:
    """Whether ``path`` is already the complete output of a run made with ``attrs``; if so, also
    remove the resume folder a run stopped between publishing and cleaning up left behind.
    Call with the output's lock held.

    Args:
        path: the output file.
        attrs: the provenance attributes (or some of them) the file must carry.
        clean: remove the leftover resume folder (otherwise only check).

    Returns:
        True when ``path`` is a complete file made with ``attrs`` (re-running the command that made
        it has nothing left to do); False when it is some other file.
    """
    path, work = Path(path), partial_path(path)
    try:
        raw = open_embeddings(path)._raw_attrs
    except Exception:  # noqa: BLE001 - not a complete embeddings file
        return False
    if any(json.dumps(_jsonable(raw.get(k))) != json.dumps(_jsonable(v)) for k, v in attrs.items()):
        return False
    if work.is_dir():
        settings = _read_settings(work)
        if settings is None:  # its removal had begun (settings go last): only temporary files may be left
            if any(not p.name.startswith(".tmp-") for p in work.iterdir()):
                return False
        elif any(json.dumps((settings.get("attrs") or {}).get(k)) != json.dumps(_jsonable(v)) for k, v in attrs.items()):
            return False
        if clean:
            remove_resume_folder(work)
    return True


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, (list, tuple)):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


@dataclass
class Embeddings:
    """An opened, complete embeddings file (lazy: arrays are read on demand).

    Attributes:
        path: the file.
        n: number of rows (item ids are 0..n-1).
        dim: embedding width.
        num_views: cached augmented views per item.
        backbone: the backbone spec that produced it.
        attrs: all provenance attributes (JSON strings decoded).
    """

    path: Path
    n: int
    dim: int
    num_views: int
    backbone: BackboneSpec
    attrs: dict

    @property
    def _raw_attrs(self) -> dict:
        with h5py.File(self.path, "r") as f:
            return {k: f.attrs[k] for k in f.attrs}

    @property
    def has_labels(self) -> bool:
        with h5py.File(self.path, "r") as f:
            return "labels" in f

    def _read(self, name: str, rows=None):
        with h5py.File(self.path, "r") as f:
            if name not in f:
                return None
            d = f[name]
            return d[()] if rows is None else d[rows]

    def embeddings(self, rows=None) -> np.ndarray:
        """Float32 ``(n, D)`` eval embeddings (or the given rows)."""
        return np.ascontiguousarray(self._read("embeddings", rows), dtype=np.float32)

    def views(self) -> np.ndarray | None:
        """Float32 ``(n, V, D)`` augmented views, or None."""
        return self._read("views")

    def view(self, v: int) -> np.ndarray:
        """Float32 ``(n, D)``: cached augmented view ``v`` of every item."""
        return self._read("views", (slice(None), v))

    def labels(self) -> np.ndarray | None:
        """uint8 ``(n, C)`` multi-hot labels, or None."""
        return self._read("labels")

    def names(self) -> list[str]:
        raw = self._read("names")
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in raw]

    def source_index(self) -> np.ndarray:
        """int64 ``(n,)`` position of each row's item in its source."""
        return self._read("source_index")

    def failures(self) -> list[dict]:
        """The items that could not be decoded: ``source_index``, ``name``, ``error``, ``message``."""
        raw = self._read("failures")
        out = []
        for row in raw if raw is not None else []:
            out.append({k: (v.decode() if isinstance(v, bytes) else int(v)) for k, v in zip(_FAIL.names, row)})
        return out

    @property
    def label_names(self) -> list[str] | None:
        return self.attrs.get("label_names")

    def provenance(self) -> dict:
        """The attributes that identify how these embeddings were made."""
        keys = ("schema_version", "hashindex_version", "backbone", "augment", "views", "seed", "source", "created", "embed_seconds", "device")
        out = {k: self.attrs.get(k) for k in keys}
        out["n"], out["dim"], out["path"] = self.n, self.dim, str(self.path.resolve())
        return out

    def verify(self) -> None:
        """Read the whole file and check it: every dataset has one row per item, rows come from
        distinct increasing source items that are not also recorded as failures, every value is
        finite, and each dataset matches its recorded sha256 (files written before checksums were
        recorded skip that part).

        Raises:
            IntegrityError: the first problem found.
        """
        p = self.path
        try:
            with h5py.File(p, "r") as f:
                for k in _DATASETS:
                    if k in f and f[k].shape[0] != self.n:
                        raise IntegrityError(f"{p}: /{k} has {f[k].shape[0]} rows, /embeddings has {self.n}")
                if "rows" in f.attrs and int(f.attrs["rows"]) != self.n:
                    raise IntegrityError(f"{p}: attribute rows={int(f.attrs['rows'])}, /embeddings has {self.n}")
                idx = f["source_index"][()]
                if len(idx) and ((np.diff(idx) <= 0).any() or idx.min() < 0):
                    raise IntegrityError(f"{p}: /source_index is not strictly increasing (an item appears twice or out of order)")
                failed = f["failures"]["source_index"] if "failures" in f and len(f["failures"]) else np.zeros(0, np.int64)
                if np.intersect1d(idx, failed).size:
                    raise IntegrityError(f"{p}: items recorded as failures also have rows")
                checksums = json.loads(f.attrs["checksums"]) if "checksums" in f.attrs else {}
                for k in _DATASETS:
                    if k not in f:
                        continue
                    data = f[k][()]
                    if k in ("embeddings", "views") and not np.isfinite(data).all():
                        raise IntegrityError(f"{p}: /{k} holds NaN or inf values")
                    if k in checksums:
                        h = hashlib.sha256()
                        if k == "names":
                            for s in data:
                                h.update((s.decode("utf-8") if isinstance(s, bytes) else str(s)).encode("utf-8") + b"\n")
                        else:
                            h.update(np.ascontiguousarray(data).tobytes())
                        if h.hexdigest() != checksums[k]:
                            raise IntegrityError(f"{p}: /{k} does not match its recorded sha256 (modified or corrupt)")
        except IntegrityError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py raises many kinds on damaged files
            raise IntegrityError(f"cannot read {p}: {type(e).__name__}: {e}") from None


def open_embeddings(path: str | os.PathLike, *, verify: bool = False) -> Embeddings:
    """Open and validate an embeddings file.

    Args:
        path: the ``.h5`` file.
        verify: also read everything and check it (:meth:`Embeddings.verify`).

    Raises:
        InputError: missing file, a partial (unfinished) file, or not a hashindex file.
        IntegrityError: a file that HDF5 cannot read, or inconsistent contents.
    """
    path = Path(path)
    if not path.exists():
        hint = " (an unfinished run left a .partial file: re-run embed to resume)" if partial_path(path).exists() else ""
        raise InputError(f"embeddings file {path} does not exist{hint}")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs}
            if "embeddings" not in f or "schema_version" not in attrs:
                raise InputError(f"{path} is not a hashindex embeddings file (no /embeddings or schema_version)")
            shape = f["embeddings"].shape
            views = f["views"].shape[1] if "views" in f else 0
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError mostly, but h5py raises others on damaged files
        raise IntegrityError(f"cannot read {path} as HDF5: {e}") from None
    try:
        if len(shape) != 2:
            raise ValueError(f"/embeddings has shape {shape}, expected (n, dim)")
        n, dim = shape
        version = int(attrs["schema_version"])
        complete = bool(attrs.get("complete", False))
        for k in ("backbone", "augment", "source", "label_names", "checksums"):
            if k in attrs and isinstance(attrs[k], (str, bytes)):
                attrs[k] = json.loads(attrs[k])
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        backbone = BackboneSpec.from_dict(attrs["backbone"]) if version <= SCHEMA_VERSION else None
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} has damaged attributes: {type(e).__name__}: {e}") from None
    if version > SCHEMA_VERSION:
        raise InputError(f"{path} has schema version {version}; this hashindex reads up to {SCHEMA_VERSION}")
    if not complete:
        raise InputError(f"{path} is incomplete: re-run embed to finish it")
    emb = Embeddings(path, int(n), int(dim), int(views), backbone, attrs)
    if verify:
        emb.verify()
    return emb
