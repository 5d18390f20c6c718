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

from hashindex.core.errors import InputError, IntegrityError, MismatchError
from hashindex.core.spec import BackboneSpec
from hashindex.store.resume import partial_path, read_settings, remove_resume_folder
from hashindex.store.schema import (
    DATASETS,
    FAIL,
    META,
    SCHEMA_VERSION,
    as_str,
    attrs_digest,
    expected_checksums,
    hash_failures,
    hash_meta,
    hash_rows,
    jsonable,
)


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
        try:
            with h5py.File(self.path, "r") as f:
                if name not in f:
                    return None
                d = f[name]
                return d[()] if rows is None else d[rows]
        except Exception as e:
            raise IntegrityError(
                f"cannot read /{name} of {self.path} (damaged file?): {type(e).__name__}: {e}"
            ) from None

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

    def names(self, rows=None) -> list[str]:
        """Item names (or those of the given rows)."""
        return [as_str(s) for s in self._read("names", rows)]

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
        keys = (
            "schema_version",
            "hashindex_version",
            "backbone",
            "augment",
            "views",
            "seed",
            "source",
            "source_digest",
            "created",
            "embed_seconds",
            "device",
            "runtime",
            "checksums",
        )
        out = {k: self.attrs.get(k) for k in keys}
        out["n"], out["dim"], out["path"] = self.n, self.dim, str(self.path.resolve())
        return out

    def verify(self) -> None:
        """Read the whole file and check it: the datasets are exactly those its checksums name,
        every dataset has one row per item, rows come from distinct increasing source items that
        are not also recorded as failures, every value is finite, and each dataset, the failures
        and the attributes match their recorded sha256 (files written before failures and
        attributes were covered have only the datasets' sums).

        Raises:
            IntegrityError: the first problem found.
        """
        p = self.path
        try:
            with h5py.File(p, "r") as f:
                if "checksums" not in f.attrs:
                    raise IntegrityError(
                        f"{p} records no checksums (damaged, or not written by hashindex): it cannot be verified"
                    )
                checksums = json.loads(f.attrs["checksums"])
                full, old = expected_checksums(f)
                if (
                    not isinstance(checksums, dict)
                    or set(checksums) not in (full, old)
                    or set(f) - set(DATASETS) - {META} != {"failures"}
                ):
                    raise IntegrityError(
                        f"{p}: its datasets ({', '.join(sorted(f))}) are not those its checksums name ({', '.join(sorted(checksums))})"
                    )
                if "attrs" in checksums and attrs_digest(f.attrs) != checksums["attrs"]:
                    raise IntegrityError(
                        f"{p}: its attributes do not match their recorded sha256 (modified or corrupt)"
                    )
                for k in DATASETS:
                    if k in f and f[k].shape[0] != self.n:
                        raise IntegrityError(f"{p}: /{k} has {f[k].shape[0]} rows, /embeddings has {self.n}")
                if "rows" in f.attrs and int(f.attrs["rows"]) != self.n:
                    raise IntegrityError(f"{p}: attribute rows={int(f.attrs['rows'])}, /embeddings has {self.n}")
                if META in f:
                    h = hashlib.sha256()
                    hash_meta(h, f[META])
                    if h.hexdigest() != checksums.get(META) or any(ds.shape[0] != self.n for ds in f[META].values()):
                        raise IntegrityError(f"{p}: /meta does not match its recorded sha256 (modified or corrupt)")
                fails = f["failures"][()]
                if "failures" in checksums:
                    h = hashlib.sha256()
                    hash_failures(h, fails.tolist())
                    if h.hexdigest() != checksums["failures"]:
                        raise IntegrityError(f"{p}: /failures does not match its recorded sha256 (modified or corrupt)")
                idx = f["source_index"][()]
                if len(idx) and ((np.diff(idx) <= 0).any() or idx.min() < 0):
                    raise IntegrityError(
                        f"{p}: /source_index is not strictly increasing (an item appears twice or out of order)"
                    )
                if np.intersect1d(idx, fails["source_index"] if len(fails) else np.zeros(0, np.int64)).size:
                    raise IntegrityError(f"{p}: items recorded as failures also have rows")
                for k in DATASETS:
                    if k not in f:
                        continue
                    data = f[k][()]
                    if k in ("embeddings", "views") and not np.isfinite(data).all():
                        raise IntegrityError(f"{p}: /{k} holds NaN or inf values")
                    h = hashlib.sha256()
                    hash_rows(h, k, data)
                    if h.hexdigest() != checksums[k]:
                        raise IntegrityError(f"{p}: /{k} does not match its recorded sha256 (modified or corrupt)")
        except IntegrityError:
            raise
        except Exception as e:
            raise IntegrityError(f"cannot read {p}: {type(e).__name__}: {e}") from None


def open_embeddings(path: str | os.PathLike, *, verify: bool = False) -> Embeddings:
    """Open and validate an embeddings file.

    Args:
        path: the ``.h5`` file.
        verify: also read everything and check it (:meth:`Embeddings.verify`): datasets and
            attributes against their recorded sha256, row counts, order, finiteness.

    Raises:
        InputError: missing file, a partial (unfinished) file, or not a hashindex file.
        IntegrityError: a file that HDF5 cannot read, or inconsistent contents.
    """
    path = Path(path)
    if not path.exists():
        hint = (
            " (an unfinished run left a .partial file: re-run embed to resume)" if partial_path(path).exists() else ""
        )
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
    except Exception as e:
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
    except Exception as e:
        raise IntegrityError(f"{path} has damaged attributes: {type(e).__name__}: {e}") from None
    if version > SCHEMA_VERSION:
        raise InputError(f"{path} has schema version {version}; this hashindex reads up to {SCHEMA_VERSION}")
    if not complete:
        raise InputError(f"{path} is incomplete: re-run embed to finish it")
    emb = Embeddings(path, int(n), int(dim), int(views), backbone, attrs)
    if verify:
        emb.verify()
    return emb


def check_same_embeddings(recorded: dict, emb: Embeddings, recorded_name: str) -> None:
    """Raise MismatchError unless ``emb`` is the embeddings file an artifact recorded (its
    ``provenance()``): the same rows by their recorded sha256 (files from before checksums: the
    same creation time, source and size). A cheap comparison of recorded values; hashing the
    file itself is :meth:`Embeddings.verify`'s job.
    """
    mine = emb.provenance()
    keys = ("checksums",) if recorded.get("checksums") and mine.get("checksums") else ("created", "source", "n", "dim")
    diff = [k for k in keys if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(mine.get(k), sort_keys=True)]
    if recorded.get("n") is not None and recorded["n"] != emb.n:
        diff = diff or ["n"]
    if diff:
        raise MismatchError(
            f"{emb.path} is not the embeddings file {recorded_name} was built from "
            f"({recorded.get('path')}, {recorded.get('n')} rows made {recorded.get('created')}; this one: {emb.n} rows "
            f"made {mine.get('created')}; differs in {', '.join(diff)})"
        )


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
    except Exception:
        return False
    if any(json.dumps(jsonable(raw.get(k))) != json.dumps(jsonable(v)) for k, v in attrs.items()):
        return False
    if work.is_dir():
        settings = read_settings(work)
        if settings is None:  # its removal had begun (settings go last): only temporary files may be left
            if any(not p.name.startswith(".tmp-") for p in work.iterdir()):
                return False
        elif any(json.dumps((settings.get("attrs") or {}).get(k)) != json.dumps(jsonable(v)) for k, v in attrs.items()):
            return False
        if clean:
            remove_resume_folder(work)
    return True
