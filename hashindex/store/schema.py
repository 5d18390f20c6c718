"""The embeddings file's schema (version 1): datasets, dtypes, and how their checksums are computed.

Layout::

    /embeddings     float32 (n, D)     eval-view features, row i is item id i
    /views          float32 (n, V, D)  augmented views (only when V > 0)
    /labels         uint8   (n, C)     multi-hot labels (only when the source has labels)
    /names          utf-8   (n,)       path relative to the source, or "split/index"
    /source_index   int64   (n,)       position of the item in its source
    /failures       compound (m,)      items that could not be decoded: source_index, name, error, message
    attrs: schema_version, hashindex_version, complete, items_done, rows, backbone (JSON),
           augment (JSON), views, seed, source (JSON), label_names (JSON), created,
           embed_seconds (wall time of the forward passes, summed over resumed runs), device,
           source_digest (the source's items when embedded), checksums (JSON: sha256 of each
           dataset's contents and, under ``attrs``, of the other attributes; checked by
           ``Embeddings.verify``)
"""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np

SCHEMA_VERSION = 1
STR = h5py.string_dtype("utf-8")
FAIL = np.dtype([("source_index", "<i8"), ("name", STR), ("error", STR), ("message", STR)])
DATASETS = ("embeddings", "views", "labels", "names", "source_index")


def jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def clean_text(s) -> str:
    """A str that encodes to UTF-8 (file names with undecodable bytes come as surrogates)."""
    s = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def text_array(items) -> np.ndarray:
    items = [clean_text(s) for s in items]
    return np.array(items, dtype=str) if items else np.zeros((0,), dtype="<U1")


def as_str(s) -> str:
    """A name read back from HDF5 (bytes or str) as str."""
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def hash_rows(h: hashlib._Hash, name: str, rows) -> None:
    """Feed rows of dataset ``name`` into its checksum: names as UTF-8 lines, arrays as raw bytes
    (the writer hashes shard by shard, the verifier the whole dataset: both give the same digest)."""
    if name == "names":
        for s in rows:
            h.update(as_str(s).encode("utf-8") + b"\n")
    else:
        h.update(np.ascontiguousarray(rows).tobytes())


def hash_failures(h: hashlib._Hash, rows) -> None:
    """Feed ``/failures`` rows (source_index, name, error, message) into their checksum."""
    for idx, *text in rows:
        h.update("\t".join([str(int(idx)), *(as_str(t) for t in text)]).encode("utf-8") + b"\n")


META = "meta"  # optional group of item metadata columns (one dataset per field)


def expected_checksums(datasets) -> tuple[set, set]:
    """The key sets a file's ``checksums`` may have: with ``failures``, ``attrs`` (and ``meta``
    when the file holds metadata; files written now), or the datasets alone (files written
    before those were covered)."""
    data = {k for k in datasets if k in DATASETS}
    return data | {"failures", "attrs"} | ({META} if META in datasets else set()), data


def hash_meta(h: hashlib._Hash, group) -> None:
    """Feed a ``/meta`` group (field name, then its values) into its checksum, fields in order."""
    for key in sorted(group):
        h.update(key.encode("utf-8") + b"\n")
        hash_rows(h, "names" if group[key].dtype.kind in "OS" else key, group[key][()])


def attrs_digest(attrs) -> str:
    """sha256 of a file's attributes (all but ``checksums``) in a canonical JSON form, so
    verification covers the provenance as well as the datasets."""
    doc = {k: jsonable(attrs[k]) for k in attrs if k != "checksums"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def new_hashes(names) -> dict:
    return {k: hashlib.sha256() for k in names}


def write_meta(f, meta: dict | None) -> None:
    """Metadata columns into ``/meta`` of an open HDF5 file: numbers as float64 (NaN for none),
    anything else as UTF-8 text (embeddings files and index items files alike)."""
    for key, v in (meta or {}).items():
        v = np.asarray(v)
        if v.dtype.kind in "OUS":
            f.create_dataset(f"{META}/{key}", data=np.array([str(s) for s in v], dtype=object), dtype=STR)
        else:
            f.create_dataset(f"{META}/{key}", data=v.astype(np.float64))
