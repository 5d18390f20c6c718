"""The index manifest (``manifest.json``): what an index folder holds and how to check it.

Every reader goes through :class:`Manifest`: it parses the JSON, checks the fields loading relies
on, and carries the sha256 of its own bytes (format 2), computed with the ``manifest_sha256``
value set to 64 zeros.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hashindex.core.codes import MAX_BITS, MIN_BITS
from hashindex.core.config import INDEX_KINDS, IndexConfig
from hashindex.core.durable import write_durably
from hashindex.core.errors import InputError, IntegrityError
from hashindex.probe.artifact import PROBE_JSON, PROBE_WEIGHTS

# Format 2 added the manifest's own checksum (``manifest_sha256``); format 1 folders still load.
# Format 3 is format 2 plus ``live`` (a live index's commit log, :mod:`hashindex.live.commits`): builds
# write format 2, the first add or remove turns a folder into format 3.
# Format 4: the index entry may name the kinds ``mih`` and carry ``tables`` and the ``reason`` of an
# automatic choice; ``live`` is optional. Builds write format 4; formats 1-3 still load.
INDEX_FORMAT = 4
LIVE_FORMAT = 3
EXTRA_EMBEDDINGS = "extra_embeddings.npy"  # kept float embeddings of items added before a compaction
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.h5"
REQUIRED_FILES = (INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}")
_CHECKSUM_KEY = "manifest_sha256"
_CHECKSUM_RE = re.compile(rb'"manifest_sha256": "([0-9a-f]{64})"')
_ZERO = "0" * 64
_KEYS = {
    "format",
    "hashindex_version",
    "faiss_version",
    "bits",
    "ntotal",
    "index",
    "probe",
    "backbone",
    "embeddings",
    "build_seconds",
    "created",
    "files",
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def sealed_bytes(doc: dict) -> bytes:
    """A manifest document as sorted, indented JSON carrying the sha256 of its own bytes."""
    doc = {k: v for k, v in doc.items() if k != _CHECKSUM_KEY}
    doc[_CHECKSUM_KEY] = _ZERO
    raw = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()
    placeholder = f'"{_CHECKSUM_KEY}": "{_ZERO}"'.encode()
    return raw.replace(placeholder, f'"{_CHECKSUM_KEY}": "{digest}"'.encode(), 1)


@dataclass(frozen=True)
class Manifest:
    """What an index folder holds.

    Attributes:
        bits: code length.
        ntotal: number of indexed items.
        index: index type and parameters.
        probe: ``method``, ``sha256`` (of the probe's files) and ``supervised``.
        backbone: the backbone spec of the indexed embeddings.
        embeddings: the provenance of the embeddings file the index was built from.
        files: relative path → ``{"sha256", "size"}`` for every file of the folder.
        format: index format (1, 2, or 3 with ``live``).
        live: the commit log of a live index (format 3; None before the first add or remove).
        hashindex_version, faiss_version, build_seconds, created: provenance.
    """

    bits: int
    ntotal: int
    index: IndexConfig
    probe: dict
    backbone: dict
    embeddings: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    format: int = INDEX_FORMAT
    hashindex_version: str | None = None
    faiss_version: str | None = None
    build_seconds: float | None = None
    created: str | None = None
    live: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["index"] = self.index.to_manifest()
        return d

    def to_bytes(self) -> bytes:
        """The manifest as written (:func:`sealed_bytes`)."""
        return sealed_bytes({k: v for k, v in self.to_dict().items() if v is not None})

    def write(self, folder: str | os.PathLike) -> None:
        """Write ``manifest.json`` into ``folder`` durably."""
        raw = self.to_bytes()
        write_durably(Path(folder) / MANIFEST, lambda fh: fh.write(raw))

    @classmethod
    def from_dict(cls, m: dict) -> Manifest:
        """Check the fields loading relies on and build the manifest.

        Raises:
            TypeError, ValueError, KeyError: a field is missing or malformed.
        """
        fmt = m["format"]
        if not _is_int(fmt) or fmt not in (1, 2, LIVE_FORMAT, INDEX_FORMAT):
            raise ValueError(f"bad format {fmt!r}")
        # Exactly the keys of its format: damage to a key (say "format" itself) cannot turn a
        # format-2 manifest into a format-1 one whose own checksum would not be checked.
        has_live = fmt == LIVE_FORMAT or (fmt >= INDEX_FORMAT and "live" in m)
        want = _KEYS | ({_CHECKSUM_KEY} if fmt >= 2 else set()) | ({"live"} if has_live else set())
        if set(m) != want:
            extra, missing = sorted(set(m) - want), sorted(want - set(m))
            raise ValueError(f"not a format-{fmt} manifest (unexpected keys {extra}, missing {missing})")
        if not _is_int(m["bits"]) or not _is_int(m["ntotal"]) or m["ntotal"] < 0:
            raise ValueError(f"bad bits/ntotal {m['bits']!r}/{m['ntotal']!r}")
        if m["bits"] % 8 or not MIN_BITS <= m["bits"] <= MAX_BITS:
            raise ValueError(f"bad bits {m['bits']!r}")
        idx = m["index"]
        if not isinstance(idx, dict) or idx.get("kind") not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {idx.get('kind') if isinstance(idx, dict) else idx!r}")
        if idx["kind"] == "ivf" and not (
            _is_int(idx.get("nlist")) and _is_int(idx.get("nprobe")) and 1 <= idx["nprobe"] <= idx["nlist"]
        ):
            raise ValueError(f"bad IVF parameters {idx!r}")
        if not isinstance(m["probe"], dict) or not isinstance(m["probe"].get("sha256"), str):
            raise ValueError("no probe sha256")
        if not isinstance(m["backbone"], dict):
            raise ValueError("no backbone")
        files = m["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
        for rel in REQUIRED_FILES:
            if rel not in files:
                raise KeyError(f"files does not list {rel}")
        for rel, want in files.items():
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or not parts:
                raise ValueError(f"file entry {rel!r} points outside the folder")
            if not isinstance(want, dict) or not _is_int(want.get("size")) or not isinstance(want.get("sha256"), str):
                raise ValueError(f"bad file entry {rel!r}: {want!r}")
        live = m.get("live")
        if live is not None:
            _check_live(live, files)
        if idx["kind"] == "mih" and not (_is_int(idx.get("tables")) and 1 <= idx["tables"] <= m["bits"]):
            raise ValueError(f"bad multi-index parameters {idx!r}")
        if idx["kind"] == "auto" or (fmt < INDEX_FORMAT and idx["kind"] == "mih"):
            raise ValueError(f"index kind {idx['kind']!r} in a format-{fmt} manifest")
        config = IndexConfig(
            idx["kind"], idx.get("nlist"), idx.get("nprobe"), idx.get("tables"), reason=idx.get("reason")
        )
        known = {k: m[k] for k in ("hashindex_version", "faiss_version", "build_seconds", "created")}
        return cls(
            m["bits"], m["ntotal"], config, m["probe"], m["backbone"], m["embeddings"], files, fmt, **known, live=live
        )

    @classmethod
    def read(cls, folder: str | os.PathLike) -> tuple[Manifest, bytes]:
        """Read and structurally validate ``folder/manifest.json`` (its checksum is checked by
        :meth:`checksum_problem`, once the files it describes have been checked).

        Raises:
            InputError: no manifest, or a newer format.
            IntegrityError: unreadable or malformed.
        """
        d = Path(folder)
        mf = d / MANIFEST
        if not mf.is_file():
            raise InputError(f"{d} is not an index folder (no {MANIFEST}; made by `hashindex build`)")
        try:
            raw = mf.read_bytes()
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            fmt = doc.get("format")
            if _is_int(fmt) and fmt > INDEX_FORMAT:
                # A newer hashindex's manifest still seals its bytes; a damaged "format" does not.
                problem = _checksum_problem(raw)
                if problem:
                    raise IntegrityError(f"{mf} claims index format {fmt} but {problem}")
                raise InputError(f"{d} has index format {fmt}; this hashindex reads up to {INDEX_FORMAT}")
            manifest = cls.from_dict(doc)
        except InputError:
            raise
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
            raise IntegrityError(f"{mf} is corrupt: {type(e).__name__}: {e}") from None
        return manifest, raw

    def checksum_problem(self, raw: bytes) -> str | None:
        """Why the manifest's bytes do not match their recorded checksum (None when they do)."""
        return _checksum_problem(raw)


def _check_live(live, files: dict) -> None:
    """The ``live`` entry's structure: counters are non-negative ints, and the commits, uploads and
    companion file it names are among the verified files (their meaning: :mod:`hashindex.live.commits`)."""
    if not isinstance(live, dict):
        raise TypeError("live is not an object")
    for key in ("generation", "next_id"):
        if not _is_int(live.get(key)) or live[key] < 0:
            raise ValueError(f"bad live {key} {live.get(key)!r}")
    named = (
        list(live.get("commits", [])) + list(live.get("uploads", [])) + ([live["extra"]] if live.get("extra") else [])
    )
    for rel in named:
        if not isinstance(rel, str) or rel not in files:
            raise ValueError(f"the live entry names {rel!r}, which is not among the manifest's files")


def _checksum_problem(raw: bytes) -> str | None:
    found = list(_CHECKSUM_RE.finditer(raw))
    if len(found) != 1 or json.loads(raw).get(_CHECKSUM_KEY) != found[0].group(1).decode():
        return f"has no valid {_CHECKSUM_KEY} (damaged or edited)"
    m = found[0]
    digest = hashlib.sha256(raw[: m.start(1)] + _ZERO.encode() + raw[m.end(1) :]).hexdigest()
    if digest != m.group(1).decode():
        return f"does not match its own sha256 (modified or corrupt: {digest[:12]}… vs recorded {m.group(1).decode()[:12]}…)"
    return None
