"""The build stage: embeddings + probe → packed codes → faiss binary index folder with a manifest.

An index folder holds::

    index.faiss        faiss binary index (IndexBinaryFlat or IndexBinaryIVF); position = item id
    items.h5           id → name (path or split/index), source index, labels
    probe/             a copy of the probe (probe.json + weights.safetensors)
    manifest.json      bits, ntotal, index type and parameters, faiss version, probe hash, backbone,
                       the embeddings' provenance, and the sha256 and size of every file

Loading verifies every file against the manifest and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from . import __version__
from .backbone import check_same_backbone, sha256_file
from .codes import check_bits
from .lookup import MAX_LOOKUP_BITS, HammingLookup
from .errors import InputError, IntegrityError, MismatchError
from .probe.artifact import PROBE_JSON, PROBE_WEIGHTS, Probe, load_probe, probe_hash
from .store import Embeddings

logger = logging.getLogger(__name__)

# Format 2 added the manifest's own checksum (``manifest_sha256``); format 1 folders still load.
INDEX_FORMAT = 2
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.h5"
IndexKind = Literal["flat", "ivf", "lookup"]


@dataclass(frozen=True)
class IndexConfig:
    """Index options. ``nlist`` defaults to about 4·√n (at most n/39, so k-means has enough points
    per list), ``nprobe`` to max(1, nlist // 16)."""

    kind: IndexKind = "flat"
    nlist: int | None = None
    nprobe: int | None = None

    def resolved(self, n: int) -> "IndexConfig":
        if self.kind not in ("flat", "ivf", "lookup"):
            raise InputError(f"unknown index type {self.kind!r}: use flat, ivf or lookup")
        if self.kind in ("flat", "lookup"):
            return IndexConfig(self.kind)
        nlist = self.nlist or int(max(1, min(65536, round(4 * np.sqrt(n)), n // 39)))
        if nlist < 1 or nlist > n:
            raise InputError(f"--nlist must be between 1 and the number of items ({n}), got {nlist}")
        nprobe = self.nprobe or max(1, nlist // 16)
        if not 1 <= nprobe <= nlist:
            raise InputError(f"--nprobe must be between 1 and nlist ({nlist}), got {nprobe}")
        return IndexConfig("ivf", nlist, nprobe)


def stored_codes(fi) -> np.ndarray:
    """The packed codes held by a faiss binary index, ``(ntotal, bits // 8)``, in id order."""
    import faiss

    if isinstance(fi, faiss.IndexBinaryFlat):
        return faiss.vector_to_array(fi.xb).reshape(fi.ntotal, fi.code_size)
    fi.make_direct_map()
    return fi.reconstruct_n(0, fi.ntotal)


IVF_TRAIN_ROWS = 1_000_000  # k-means sample: faiss turns training codes into float vectors


def make_faiss_index(codes: np.ndarray, config: IndexConfig):
    """A faiss binary index over packed codes (ids are row positions).

    ``lookup`` indexes store their codes in a flat index; the table is built when loaded. IVF
    centroids are trained on a uniform sample of at most ``IVF_TRAIN_ROWS`` codes (faiss
    converts the training codes to floats, 32x their size; its k-means uses at most 256 a list).
    """
    import faiss

    bits = codes.shape[1] * 8
    if config.kind == "lookup" and bits > MAX_LOOKUP_BITS:
        raise InputError(f"the lookup index serves codes of at most {MAX_LOOKUP_BITS} bits, not {bits}: use flat or ivf")
    if config.kind in ("flat", "lookup"):
        index = faiss.IndexBinaryFlat(bits)
    else:
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, config.nlist)
        train, rows = codes, min(IVF_TRAIN_ROWS, 256 * config.nlist)  # faiss k-means keeps <= 256 a list
        if len(codes) > rows:
            train = codes[np.sort(np.random.default_rng(0).choice(len(codes), rows, replace=False))]
        index.train(train)
        del train
        index.nprobe = config.nprobe
    index.add(codes)
    return index


@dataclass
class HashIndex:
    """A loaded, verified index folder."""

    path: Path
    manifest: dict
    faiss_index: object
    probe: Probe
    lookup: HammingLookup | None = None

    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])

    @property
    def ntotal(self) -> int:
        return int(self.manifest["ntotal"])

    @property
    def kind(self) -> str:
        return self.manifest["index"]["kind"]

    def items(self) -> dict:
        """``names`` (list[str]), ``source_index`` (int64), ``labels`` (uint8 or None), ``label_names``."""
        with h5py.File(self.path / ITEMS_FILE, "r") as f:
            names = [s.decode() if isinstance(s, bytes) else str(s) for s in f["names"][()]]
            return {
                "names": names,
                "source_index": f["source_index"][()],
                "labels": f["labels"][()] if "labels" in f else None,
                "label_names": json.loads(f.attrs.get("label_names", "null")),
            }

    def set_nprobe(self, nprobe: int | None) -> None:
        """Change the IVF search breadth (ignored by flat indexes)."""
        if nprobe is None or self.kind != "ivf":
            return
        nlist = self.manifest["index"]["nlist"]
        if not 1 <= nprobe <= nlist:
            raise InputError(f"--nprobe must be between 1 and nlist ({nlist}), got {nprobe}")
        self.faiss_index.nprobe = nprobe


def build_index(emb: Embeddings, probe_dir: str | os.PathLike, out_dir: str | os.PathLike, config: IndexConfig = IndexConfig()) -> HashIndex:
    """Encode every embedding with the probe and write an index folder.

    Args:
        emb: the database embeddings.
        probe_dir: a folder written by ``fit-probe``.
        out_dir: the index folder to create (must not exist or be empty).
        config: index type and parameters.

    Returns:
        The index, loaded from what was written.

    Raises:
        InputError: an existing non-empty output folder, bad parameters.
        MismatchError: probe and embeddings disagree (dimension or backbone).
    """
    import faiss

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty: choose another folder or remove it")
    probe = load_probe(probe_dir)
    if probe.input_dim != emb.dim:
        raise MismatchError(f"the probe expects {probe.input_dim}-d embeddings, but {emb.path} holds {emb.dim}-d embeddings")
    if probe.backbone is not None:
        check_same_backbone(probe.backbone, emb.backbone, f"the embeddings the probe {probe_dir} was fitted on", f"the embeddings {emb.path}")
    check_bits(probe.bits)
    cfg = config.resolved(emb.n)
    t0 = time.perf_counter()
    codes = np.empty((emb.n, probe.bits // 8), np.uint8)  # streamed: peak memory is codes + a chunk
    for s in range(0, emb.n, 65536):
        codes[s : s + 65536] = probe.encode(emb.embeddings(slice(s, s + 65536)))
    index = make_faiss_index(codes, cfg)
    build_seconds = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        faiss.write_index_binary(index, str(tmp / INDEX_FILE))
        (tmp / "probe").mkdir()
        for name in (PROBE_JSON, PROBE_WEIGHTS):
            shutil.copyfile(Path(probe_dir) / name, tmp / "probe" / name)
        with h5py.File(tmp / ITEMS_FILE, "w") as f:
            with h5py.File(emb.path, "r") as src:  # copied inside HDF5: names never become Python objects
                for name in ("names", "source_index", "labels"):
                    if name in src:
                        src.copy(src[name], f, name)
            f.attrs["label_names"] = json.dumps(emb.label_names)
        files = {}
        for rel in (INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}"):
            files[rel] = {"sha256": sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size}
        manifest = {
            "format": INDEX_FORMAT,
            "hashindex_version": __version__,
            "faiss_version": faiss.__version__,
            "bits": probe.bits,
            "ntotal": int(index.ntotal),
            "index": asdict(cfg),
            "probe": {"method": probe.method, "sha256": probe_hash(tmp / "probe"), "supervised": probe.config.get("supervised", False)},
            "backbone": emb.backbone.to_dict(),
            "embeddings": emb.provenance(),
            "build_seconds": round(build_seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        write_manifest(tmp / MANIFEST, manifest)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built %s index of %d codes (%d bits) in %.2fs", cfg.kind, index.ntotal, probe.bits, build_seconds)
    return load_index(out)


_CHECKSUM_KEY = "manifest_sha256"
_CHECKSUM_RE = re.compile(rb'"manifest_sha256": "([0-9a-f]{64})"')
_ZERO = "0" * 64
REQUIRED_FILES = (INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}")


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as written: sorted, indented JSON carrying the sha256 of its own bytes
    (computed with the ``manifest_sha256`` value set to 64 zeros)."""
    doc = {k: v for k, v in manifest.items() if k != _CHECKSUM_KEY}
    doc[_CHECKSUM_KEY] = _ZERO
    raw = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
    digest = hashlib.sha256(raw).hexdigest()
    placeholder = f'"{_CHECKSUM_KEY}": "{_ZERO}"'.encode()
    return raw.replace(placeholder, f'"{_CHECKSUM_KEY}": "{digest}"'.encode(), 1)


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    """Write ``manifest.json`` with its checksum, fsynced."""
    with open(path, "wb") as fh:
        fh.write(manifest_bytes(manifest))
        fh.flush()
        os.fsync(fh.fileno())


def _manifest_checksum_problem(raw: bytes, manifest: dict) -> str | None:
    """Why the manifest's bytes do not match its recorded checksum (None when they do)."""
    found = list(_CHECKSUM_RE.finditer(raw))
    if len(found) != 1 or manifest.get(_CHECKSUM_KEY) != found[0].group(1).decode():
        return f"has no valid {_CHECKSUM_KEY} (damaged or edited)"
    m = found[0]
    digest = hashlib.sha256(raw[: m.start(1)] + _ZERO.encode() + raw[m.end(1) :]).hexdigest()
    if digest != m.group(1).decode():
        return f"does not match its own sha256 (modified or corrupt: {digest[:12]}… vs recorded {m.group(1).decode()[:12]}…)"
    return None


def read_manifest(d: str | os.PathLike) -> tuple[dict, bytes]:
    """Read and structurally validate ``manifest.json`` (the checksum is checked by :func:`load_index`).

    Raises:
        InputError: no manifest, or a newer format.
        IntegrityError: unreadable or malformed.
    """
    d = Path(d)
    mf = d / MANIFEST
    if not mf.is_file():
        raise InputError(f"{d} is not an index folder (no {MANIFEST}; made by `hashindex build`)")
    try:
        raw = mf.read_bytes()
        manifest = json.loads(raw.decode("utf-8"))
        if not isinstance(manifest, dict):
            raise TypeError("not a JSON object")
        fmt = manifest.get("format", 1)
        if _is_int(fmt) and fmt > INDEX_FORMAT:
            raise InputError(f"{d} has index format {fmt}; this hashindex reads up to {INDEX_FORMAT} (or its manifest is damaged)")
        _check_manifest_fields(manifest)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
        if isinstance(e, InputError):
            raise
        raise IntegrityError(f"{mf} is corrupt: {type(e).__name__}: {e}") from None
    return manifest, raw


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_manifest_fields(m: dict) -> None:
    """Raise TypeError/ValueError/KeyError unless the manifest has the fields loading relies on."""
    if not _is_int(m.get("format", 1)) or m.get("format", 1) < 1:
        raise ValueError(f"bad format {m.get('format')!r}")
    if not _is_int(m["bits"]) or not _is_int(m["ntotal"]) or m["ntotal"] < 0:
        raise ValueError(f"bad bits/ntotal {m['bits']!r}/{m['ntotal']!r}")
    if m["bits"] % 8 or not 8 <= m["bits"] <= 1024:
        raise ValueError(f"bad bits {m['bits']!r}")
    idx = m["index"]
    if not isinstance(idx, dict) or idx.get("kind") not in ("flat", "ivf", "lookup"):
        raise ValueError(f"unknown index kind {idx.get('kind') if isinstance(idx, dict) else idx!r}")
    if idx["kind"] == "ivf" and not (_is_int(idx.get("nlist")) and _is_int(idx.get("nprobe")) and 1 <= idx["nprobe"] <= idx["nlist"]):
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


def _verify_files(d: Path, files: dict, verify: bool) -> None:
    for rel, want in files.items():
        f = d / rel
        if not f.is_file():
            raise IntegrityError(f"{d}: {rel} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise IntegrityError(f"{d}: {rel} has {size} bytes, the manifest says {want['size']} (truncated or modified)")
        if verify and sha256_file(f) != want["sha256"]:
            raise IntegrityError(f"{d}: {rel} does not match its sha256 in the manifest (modified or corrupt)")


def _check_consistency(d: Path, manifest: dict, probe: Probe, index, verify: bool) -> None:
    """The manifest, probe, faiss index and items must describe the same collection."""
    bits, ntotal, kind = manifest["bits"], manifest["ntotal"], manifest["index"]["kind"]
    if index.d != bits or index.ntotal != ntotal:
        raise IntegrityError(f"{d}: {INDEX_FILE} holds {index.ntotal} codes of {index.d} bits, the manifest says {ntotal} of {bits}")
    is_ivf = "IVF" in type(index).__name__
    if is_ivf != (kind == "ivf"):
        raise IntegrityError(f"{d}: {INDEX_FILE} is a {type(index).__name__}, the manifest says a {kind} index")
    if verify and probe_hash(d / "probe") != manifest["probe"]["sha256"]:
        raise IntegrityError(f"{d}: the probe's files hash to another value than the probe sha256 in the manifest")
    dim = manifest["backbone"].get("num_features")
    if dim is not None and probe.input_dim != dim:
        raise MismatchError(f"{d}: the probe expects {probe.input_dim}-d embeddings, but the manifest's backbone makes {dim}-d ones")
    if isinstance(probe.backbone, dict):
        check_same_backbone(probe.backbone, manifest["backbone"], f"the embeddings the probe of {d} was fitted on", f"the indexed embeddings (manifest of {d})")
    try:
        with h5py.File(d / ITEMS_FILE, "r") as f:
            n_items = f["names"].shape[0]
            labelled = f["labels"].shape[0] if "labels" in f else n_items
    except Exception as e:  # noqa: BLE001 - h5py raises many kinds on damaged files
        raise IntegrityError(f"{d}: cannot read {ITEMS_FILE}: {type(e).__name__}: {e}") from None
    if n_items != ntotal or labelled != ntotal:
        raise IntegrityError(f"{d}: {ITEMS_FILE} describes {n_items} items, the index holds {ntotal} codes")


def load_index(path: str | os.PathLike, *, verify: bool = True, mmap: bool = False) -> HashIndex:
    """Open an index folder, checking every file against the manifest.

    The checks, in order: the manifest's structure; each listed file's presence, size and sha256;
    the probe (bits, input width and backbone against the manifest, its hash); the faiss index
    (bits, ntotal and type against the manifest); the items file (one row per code); and last the
    manifest's own sha256, so an edited manifest that contradicts the files is reported as the
    mismatch it causes, and any other change to it as corruption.

    Args:
        path: the index folder.
        verify: check the sha256 of all files (on by default; sizes and the manifest's own
            checksum are always checked). Only skip it for files you trust: a damaged index file
            that is not hashed can crash faiss.
        mmap: memory-map the codes (flat) or inverted lists (IVF) instead of reading them: the
            index opens at once and its pages are shared with the page cache. Such an index
            is read-only (faiss aborts on an add).

    Raises:
        InputError: not an index folder, or a newer format.
        IntegrityError: a file is missing, truncated, modified, or unreadable.
        MismatchError: the probe does not fit the manifest (bits, width, backbone).
    """
    import faiss

    d = Path(path)
    manifest, raw = read_manifest(d)
    bits, ntotal = manifest["bits"], manifest["ntotal"]
    _verify_files(d, manifest["files"], verify)
    probe = load_probe(d / "probe")
    if probe.bits != bits:
        raise MismatchError(f"{d}: the probe makes {probe.bits}-bit codes but the manifest says {bits} bits")
    try:
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0  # maps flat codes and IVF lists alike
        index = faiss.read_index_binary(str(d / INDEX_FILE), flags)
    except (RuntimeError, MemoryError, ValueError) as e:  # MemoryError: a damaged size field
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IntegrityError(f"{d}: cannot read {INDEX_FILE}: {msg}") from None
    _check_consistency(d, manifest, probe, index, verify)
    if manifest.get("format", 1) >= 2:
        problem = _manifest_checksum_problem(raw, manifest)
        if problem:
            raise IntegrityError(f"{d / MANIFEST} {problem}")
    else:
        logger.warning("%s has index format 1, whose manifest carries no checksum of its own: rebuild it to have it verified", d)
    if manifest.get("faiss_version") and manifest["faiss_version"].split(".")[:2] != faiss.__version__.split(".")[:2]:
        logger.info("%s was written by faiss %s, read by faiss %s", d, manifest["faiss_version"], faiss.__version__)
    lookup = None
    if manifest["index"]["kind"] == "ivf":
        index.nprobe = int(manifest["index"]["nprobe"])
    elif manifest["index"]["kind"] == "lookup":
        lookup = HammingLookup(stored_codes(index))
    return HashIndex(d, manifest, index, probe, lookup)
