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

import json
import logging
import os
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

INDEX_FORMAT = 1
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


def make_faiss_index(codes: np.ndarray, config: IndexConfig):
    """A faiss binary index over packed codes (ids are row positions).

    ``lookup`` indexes store their codes in a flat index; the table is built when loaded.
    """
    import faiss

    bits = codes.shape[1] * 8
    if config.kind == "lookup" and bits > MAX_LOOKUP_BITS:
        raise InputError(f"the lookup index serves codes of at most {MAX_LOOKUP_BITS} bits, not {bits}: use flat or ivf")
    if config.kind in ("flat", "lookup"):
        index = faiss.IndexBinaryFlat(bits)
    else:
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, config.nlist)
        index.train(codes)
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
    codes = np.concatenate([probe.encode(emb.embeddings(slice(s, s + 65536))) for s in range(0, emb.n, 65536)])
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
            f.create_dataset("names", data=np.array(emb.names(), dtype=object), dtype=h5py.string_dtype("utf-8"))
            with h5py.File(emb.path, "r") as src:
                f.create_dataset("source_index", data=src["source_index"][()])
            labels = emb.labels()
            if labels is not None:
                f.create_dataset("labels", data=labels)
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
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built %s index of %d codes (%d bits) in %.2fs", cfg.kind, index.ntotal, probe.bits, build_seconds)
    return load_index(out)


def load_index(path: str | os.PathLike, *, verify: bool = True) -> HashIndex:
    """Open an index folder, checking every file against the manifest.

    Args:
        path: the index folder.
        verify: check sha256 and sizes of all files (on by default).

    Raises:
        InputError: not an index folder, or a newer format.
        IntegrityError: a file is missing, truncated, modified, or unreadable.
    """
    import faiss

    d = Path(path)
    if not (d / MANIFEST).is_file():
        raise InputError(f"{d} is not an index folder (no {MANIFEST}; made by `hashindex build`)")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
        bits, ntotal = int(manifest["bits"]), int(manifest["ntotal"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{d / MANIFEST} is corrupt: {type(e).__name__}: {e}") from None
    if manifest.get("format", 0) > INDEX_FORMAT:
        raise InputError(f"{d} has index format {manifest['format']}; this hashindex reads up to {INDEX_FORMAT}")
    for rel, want in files.items():
        f = d / rel
        if not f.is_file():
            raise IntegrityError(f"{d}: {rel} is missing")
        if f.stat().st_size != want["size"]:
            raise IntegrityError(f"{d}: {rel} has {f.stat().st_size} bytes, the manifest says {want['size']}")
        if verify and sha256_file(f) != want["sha256"]:
            raise IntegrityError(f"{d}: {rel} does not match its sha256 in the manifest (modified or corrupt)")
    probe = load_probe(d / "probe")
    if probe.bits != bits:
        raise MismatchError(f"{d}: the probe makes {probe.bits}-bit codes but the manifest says {bits} bits")
    try:
        index = faiss.read_index_binary(str(d / INDEX_FILE))
    except RuntimeError as e:
        raise IntegrityError(f"{d}: cannot read {INDEX_FILE}: {str(e).splitlines()[0]}") from None
    if index.d != bits or index.ntotal != ntotal:
        raise IntegrityError(f"{d}: index holds {index.ntotal} codes of {index.d} bits, the manifest says {ntotal} of {bits}")
    lookup = None
    if manifest["index"]["kind"] == "ivf":
        index.nprobe = int(manifest["index"]["nprobe"])
    elif manifest["index"]["kind"] == "lookup":
        lookup = HammingLookup(faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size))
    return HashIndex(d, manifest, index, probe, lookup)
