"""The commit log of a live index folder: append-only commit files named by manifest generations.

A commit is one ``.npz`` file (no pickle) in ``commits/``: either an *add* (``ids``, ``codes``,
``names``, ``labels``, ``embeddings``, ``source_index``) or a *remove* (``removed`` ids). It is
written to a temporary name, fsynced, renamed and its folder fsynced; only then does a new
manifest generation name it (written the same way, so the rename of ``manifest.json`` is the
commit point). A commit file that the manifest does not name is an unfinished one: loading
ignores it and the next writer deletes it.

The manifest's ``live`` key (index format 3, :class:`~hashindex.index.manifest.Manifest`) holds the generation, the ``next_id`` counter (never goes
back), the named commits in order, counters, and the base's companion file of float embeddings
(written by ``compact``). Folders without it are generation 0 with ``next_id = ntotal``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from hashindex.core.durable import fsync_dir, write_durably
from hashindex.core.errors import IntegrityError
from hashindex.index.manifest import LIVE_FORMAT, Manifest

logger = logging.getLogger(__name__)

COMMITS_DIR = "commits"
UPLOADS_DIR = "uploads"
_COMMIT_RE = re.compile(r"^(\d{10})-(add|remove)\.npz$")
_ADD_KEYS = ("ids", "codes", "names", "labels", "embeddings", "source_index")


@dataclass(frozen=True)
class LiveState:
    """The manifest's ``live`` key: where the commit log stands."""

    generation: int = 0
    next_id: int = 0
    commits: tuple[str, ...] = ()
    added_total: int = 0  # items added since the index was built (the probe was fitted before)
    removed_total: int = 0
    built: str | None = None  # when the index (and so the probe's use) began; kept by compact
    extra: str | None = None  # base companion file of float embeddings (items added before a compact)
    compacted: str | None = None
    uploads: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["commits"], d["uploads"] = list(self.commits), list(self.uploads)
        return d


def live_state(manifest: Manifest) -> LiveState:
    """The live state recorded in a manifest (defaults for folders written before it existed);
    :class:`~hashindex.index.manifest.Manifest` already checked that the files it names are listed.

    Raises:
        IntegrityError: a malformed ``live`` entry.
    """
    doc = manifest.live
    if doc is None:
        return LiveState(next_id=manifest.ntotal, built=manifest.created)
    try:
        state = LiveState(**{k: tuple(v) if k in ("commits", "uploads") else v for k, v in doc.items()})
        ints = (state.generation, state.next_id, state.added_total, state.removed_total)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise ValueError(f"bad counters {ints}")
        if state.next_id < manifest.ntotal:
            raise ValueError(f"next_id {state.next_id} below the base's {manifest.ntotal} items")
    except (TypeError, ValueError, AttributeError) as e:
        raise IntegrityError(f"the manifest's live entry is malformed: {e}") from None
    return state


def write_file(folder: Path, rel: str, data: bytes) -> dict:
    """Write ``folder/rel`` durably; returns its manifest entry (sha256 and size)."""
    path = folder / rel
    path.parent.mkdir(exist_ok=True)
    write_durably(path, lambda fh: fh.write(data))
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def add_commit(ids, codes, names, labels, embeddings, source_index, *, roots=None, root_id=None, meta=None) -> dict:
    """An add commit's arrays (``kind`` plus what :func:`commit_bytes` writes). Optional:
    ``roots`` (folders the names are relative to) with ``root_id`` (per item, -1: none), and
    ``meta`` (field -> one value per item, stored as ``meta__<field>``)."""
    out = {
        "kind": "add",
        "ids": np.asarray(ids, np.int64),
        "codes": np.ascontiguousarray(codes, np.uint8),
        "names": np.array([str(n) for n in names], dtype=str),
        "labels": np.zeros((len(ids), 0), np.uint8) if labels is None else np.asarray(labels, np.uint8),
        "embeddings": np.ascontiguousarray(embeddings, np.float32),
        "source_index": np.asarray(source_index, np.int64),
    }
    if roots:
        out["roots"] = np.array([str(r) for r in roots], dtype=str)
        out["root_id"] = np.asarray(root_id, np.int32)
    for key, v in (meta or {}).items():
        v = np.asarray(v)
        out[f"meta__{key}"] = (
            np.array([str(x) for x in v], dtype=str) if v.dtype.kind in "OUS" else v.astype(np.float64)
        )
    return out


def remove_commit(ids) -> dict:
    """A remove commit's arrays."""
    return {"kind": "remove", "removed": np.asarray(ids, np.int64)}


def commit_bytes(commit: dict) -> bytes:
    """A commit's file contents: its arrays in an ``.npz`` (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in commit.items() if k != "kind"})
    return buf.getvalue()


def commit_name(generation: int, kind: str) -> str:
    return f"{COMMITS_DIR}/{generation:010d}-{kind}.npz"


def read_commit(folder: Path, rel: str) -> dict:
    """Read a named commit: ``{"kind": "add", ids, codes, ...}`` or ``{"kind": "remove", "removed"}``.

    Raises:
        IntegrityError: unreadable, or arrays of inconsistent shapes.
    """
    m = _COMMIT_RE.match(Path(rel).name)
    try:
        if m is None:
            raise ValueError("not a commit file name")
        with np.load(folder / rel, allow_pickle=False) as z:
            doc = {k: z[k] for k in z.files}
        doc["kind"] = m.group(2)
        if doc["kind"] == "remove":
            if doc["removed"].ndim != 1 or doc["removed"].dtype != np.int64:
                raise ValueError("removed ids must be a 1-D int64 array")
            return doc
        n = len(doc["ids"])
        if any(k not in doc for k in _ADD_KEYS) or doc["ids"].dtype != np.int64 or doc["codes"].dtype != np.uint8:
            raise ValueError("missing arrays or wrong dtypes")
        extra = [k for k in doc if k == "root_id" or k.startswith("meta__")]
        if any(len(doc[k]) != n for k in (*_ADD_KEYS, *extra)) or doc["codes"].ndim != 2 or doc["embeddings"].ndim != 2:
            raise ValueError("arrays of different lengths")
        if ("roots" in doc) != ("root_id" in doc) or (
            "root_id" in doc and len(doc["root_id"]) and doc["root_id"].max() >= len(doc["roots"])
        ):
            raise ValueError("item roots that name no recorded folder")
        return doc
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise IntegrityError(f"commit {folder / rel} is unreadable: {type(e).__name__}: {e}") from None


def publish(folder: Path, manifest: Manifest, state: LiveState, new_files: dict[str, dict]) -> Manifest:
    """Name new (already durable) files in a new manifest generation, written durably.

    Returns:
        The new manifest.
    """
    out = replace(
        manifest,
        files=dict(manifest.files, **new_files),
        live=state.to_dict(),
        format=max(manifest.format, LIVE_FORMAT),
    )
    out.write(folder)
    return out


def discard_unnamed(folder: Path, manifest: Manifest) -> None:
    """Delete commit and upload files the manifest does not name (left by a killed writer)."""
    named = set(manifest.files)
    for sub in (COMMITS_DIR, UPLOADS_DIR):
        d = folder / sub
        if not d.is_dir():
            continue
        stray = [p for p in d.iterdir() if f"{sub}/{p.name}" not in named]
        for p in stray:
            logger.info("discarding %s (an unfinished commit)", p)
            p.unlink(missing_ok=True)
        if stray:
            fsync_dir(d)


def next_state(
    state: LiveState, rel: str, *, added: int = 0, removed: int = 0, next_id: int | None = None, uploads=()
) -> LiveState:
    """The state after one more commit."""
    return replace(
        state,
        generation=state.generation + 1,
        next_id=state.next_id if next_id is None else next_id,
        commits=state.commits + (rel,),
        added_total=state.added_total + added,
        removed_total=state.removed_total + removed,
        uploads=state.uploads + tuple(uploads),
    )
