"""Reading an embeddings file: open, validate, read rows lazily, verify against its checksums.

Reading needs h5py and NumPy only (no torch): a service or a query by stored embeddings starts fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError, IntegrityError
from ..spec import BackboneSpec
from .resume import partial_path
from .schema import DATASETS, FAIL, SCHEMA_VERSION, as_str, hash_rows


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
        return [as_str(s) for s in raw]

    def source_index(self) -> np.ndarray:
        """int64 ``(n,)`` position of each row's item in its source."""
        return self._read("source_index")

    def failures(self) -> list[dict]:
        """The items that could not be decoded: ``source_index``, ``name``, ``error``, ``message``."""
        raw = self._read("failures")
        out = []
        for row in raw if raw is not None else []:
            out.append({k: (v.decode() if isinstance(v, bytes) else int(v)) for k, v in zip(FAIL.names, row)})
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
                for k in DATASETS:
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
                for k in DATASETS:
                    if k not in f:
                        continue
                    data = f[k][()]
                    if k in ("embeddings", "views") and not np.isfinite(data).all():
                        raise IntegrityError(f"{p}: /{k} holds NaN or inf values")
                    if k in checksums:
                        h = hashlib.sha256()
                        hash_rows(h, k, data)
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
