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
           embed_seconds (wall time of the forward passes, summed over resumed runs), device

A file is written as ``OUT.partial`` and renamed to ``OUT`` once complete, so a file named
``OUT`` is always whole. ``items_done``/``rows`` mark how far a partial file is valid.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .backbone import BackboneSpec
from .errors import InputError, IntegrityError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_FAIL = np.dtype([("source_index", "<i8"), ("name", _STR), ("error", _STR), ("message", _STR)])


def partial_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".partial")


class EmbeddingsWriter:
    """Appends batches to a partial embeddings file; resumable; published by :meth:`finish`."""

    def __init__(self, path: str | os.PathLike, *, n: int, dim: int, views: int, label_dim: int, attrs: dict):
        self.path = Path(path)
        self.tmp = partial_path(path)
        resume = self.tmp.exists()
        try:
            self.f = h5py.File(self.tmp, "a" if resume else "w")
        except OSError as e:
            raise InputError(f"cannot write {self.tmp}: {e}") from None
        if resume and self._matches(attrs):
            logger.info("resuming %s at item %d", self.tmp, self.items_done)
            return
        if resume:
            self.f.close()
            raise InputError(
                f"{self.tmp} is left from a run with other settings; delete it to start over, "
                "or re-run the original command to resume it"
            )
        f = self.f
        chunk = max(1, min(n, 256))
        f.create_dataset("embeddings", (n, dim), "f4", maxshape=(None, dim), chunks=(chunk, dim))
        if views:
            f.create_dataset("views", (n, views, dim), "f4", maxshape=(None, views, dim), chunks=(chunk, views, dim))
        if label_dim:
            f.create_dataset("labels", (n, label_dim), "u1", maxshape=(None, label_dim))
        f.create_dataset("names", (n,), _STR, maxshape=(None,))
        f.create_dataset("source_index", (n,), "i8", maxshape=(None,))
        f.create_dataset("failures", (0,), _FAIL, maxshape=(None,), chunks=(64,))
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["hashindex_version"] = __version__
        f.attrs["complete"] = False
        f.attrs["items_done"] = 0
        f.attrs["rows"] = 0
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        f.flush()

    def _matches(self, attrs: dict) -> bool:
        return all(k in self.f.attrs and _same(self.f.attrs[k], v) for k, v in attrs.items())

    @property
    def items_done(self) -> int:
        return int(self.f.attrs["items_done"])

    @property
    def rows(self) -> int:
        return int(self.f.attrs["rows"])

    def attr(self, name: str, default=None):
        return self.f.attrs.get(name, default)

    def append(self, *, items_done: int, embeddings, views, labels, names, source_index, failures=(), **attrs) -> None:
        """Write one batch of rows, then advance the resume marks (and set ``attrs``) and flush."""
        f, r, m = self.f, self.rows, len(names)
        if m:
            f["embeddings"][r : r + m] = embeddings
            if views is not None:
                f["views"][r : r + m] = views
            if labels is not None:
                f["labels"][r : r + m] = labels
            f["names"][r : r + m] = names
            f["source_index"][r : r + m] = source_index
        if failures:
            fd = f["failures"]
            k = fd.shape[0]
            fd.resize((k + len(failures),))
            fd[k:] = np.array(failures, dtype=_FAIL)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["rows"] = r + m
        f.attrs["items_done"] = items_done
        f.flush()

    def finish(self, **attrs) -> Path:
        """Trim to the rows written, set ``attrs``, mark complete, fsync and atomically rename to
        the final path."""
        f, r = self.f, self.rows
        for k, v in attrs.items():
            f.attrs[k] = v
        for name in ("embeddings", "views", "labels", "names", "source_index"):
            if name in f:
                f[name].resize(r, axis=0)
        f.attrs["complete"] = True
        f.flush()
        f.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


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

    def labels(self) -> np.ndarray | None:
        """uint8 ``(n, C)`` multi-hot labels, or None."""
        return self._read("labels")

    def names(self) -> list[str]:
        raw = self._read("names")
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in raw]

    def failures(self) -> list[dict]:
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


def open_embeddings(path: str | os.PathLike) -> Embeddings:
    """Open and validate an embeddings file.

    Raises:
        InputError: missing file, a partial (unfinished) file, or not a hashindex file.
        IntegrityError: a file that HDF5 cannot read.
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
            n, dim = f["embeddings"].shape
            views = f["views"].shape[1] if "views" in f else 0
    except OSError as e:
        raise IntegrityError(f"cannot read {path} as HDF5: {e}") from None
    if int(attrs["schema_version"]) > SCHEMA_VERSION:
        raise InputError(f"{path} has schema version {attrs['schema_version']}; this hashindex reads up to {SCHEMA_VERSION}")
    if not bool(attrs.get("complete", False)):
        raise InputError(f"{path} is incomplete: re-run embed to finish it")
    for k in ("backbone", "augment", "source", "label_names"):
        if k in attrs and isinstance(attrs[k], str):
            attrs[k] = json.loads(attrs[k])
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    return Embeddings(path, int(n), int(dim), int(views), BackboneSpec.from_dict(attrs["backbone"]), attrs)
