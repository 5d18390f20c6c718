"""Loading an index folder (written by :mod:`hashindex.index.build`): every file is verified
against the manifest (:mod:`hashindex.index.manifest`) and a mismatch is refused. Loading needs
faiss, h5py and NumPy, not torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError, IntegrityError, MismatchError
from hashindex.core.spec import check_same_backbone, sha256_file
from hashindex.index.faiss_access import is_ivf, stored_codes
from hashindex.index.items import count_items, read_items
from hashindex.index.manifest import INDEX_FILE, ITEMS_FILE, MANIFEST, Manifest
from hashindex.index.mih import MIHTables
from hashindex.probe.artifact import Probe, load_probe, probe_hash
from hashindex.store.reader import Embeddings, check_same_embeddings, open_embeddings

logger = logging.getLogger(__name__)


@dataclass
class HashIndex:
    """A loaded, verified index folder: its manifest, faiss index, probe and (mih) tables."""

    path: Path
    manifest: Manifest
    faiss_index: object
    probe: Probe
    tables: MIHTables | None = None

    @property
    def bits(self) -> int:
        return self.manifest.bits

    @property
    def ntotal(self) -> int:
        return self.manifest.ntotal

    @property
    def kind(self) -> str:
        return self.manifest.index.kind

    def codes(self) -> np.ndarray:
        """The packed codes of every item, ``(ntotal, bits // 8)``, in row order."""
        return stored_codes(self.faiss_index)

    def items(self, names: bool = True) -> dict:
        """The items file's columns (:func:`~hashindex.index.items.read_items`)."""
        return read_items(self.path / ITEMS_FILE, names=names)

    def check_queries(self, queries: Embeddings) -> None:
        """Raises MismatchError unless query embeddings come from the index's backbone."""
        check_same_backbone(
            self.manifest.backbone, queries.backbone, f"the codes of index {self.path}", f"the queries {queries.path}"
        )

    def check_database(self, emb: Embeddings) -> None:
        """Raises MismatchError unless ``emb`` is the embeddings file the index was built from
        (compared by the checksums recorded in both; see :func:`~hashindex.store.reader.check_same_embeddings`)."""
        check_same_embeddings(self.manifest.embeddings, emb, f"index {self.path}")

    def database(self, *, verify: bool = False) -> Embeddings:
        """The embeddings file the index was built from, checked to be that file: at its recorded
        path, or beside the index folder under its recorded name (a folder moved with its files).

        Raises:
            InputError: it is gone.
            MismatchError: the file found is another one.
        """
        recorded = self.manifest.embeddings.get("path")
        candidates = [recorded] if recorded else []
        if recorded:
            candidates.append(str(self.path.parent / Path(recorded).name))
        for path in candidates:
            if os.path.exists(path):
                emb = open_embeddings(path, verify=verify)
                self.check_database(emb)
                return emb
        raise InputError(f"the database embeddings {recorded} of index {self.path} are gone: pass them explicitly")


def _verify_files(d: Path, files: dict, verify: bool) -> None:
    for rel, want in files.items():
        f = d / rel
        if not f.is_file():
            raise IntegrityError(f"{d}: {rel} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise IntegrityError(
                f"{d}: {rel} has {size} bytes, the manifest says {want['size']} (truncated or modified)"
            )
        if verify and sha256_file(f) != want["sha256"]:
            raise IntegrityError(f"{d}: {rel} does not match its sha256 in the manifest (modified or corrupt)")


def _check_consistency(d: Path, manifest: Manifest, probe: Probe, index, verify: bool) -> None:
    """The manifest, probe, faiss index and items must describe the same collection."""
    bits, ntotal, kind = manifest.bits, manifest.ntotal, manifest.index.kind
    if index.d != bits or index.ntotal != ntotal:
        raise IntegrityError(
            f"{d}: {INDEX_FILE} holds {index.ntotal} codes of {index.d} bits, the manifest says {ntotal} of {bits}"
        )
    if is_ivf(index) != (kind == "ivf"):
        raise IntegrityError(f"{d}: {INDEX_FILE} is a {type(index).__name__}, the manifest says a {kind} index")
    if verify and probe_hash(d / "probe") != manifest.probe["sha256"]:
        raise IntegrityError(f"{d}: the probe's files hash to another value than the probe sha256 in the manifest")
    dim = manifest.backbone.get("num_features")
    if dim is not None and probe.input_dim != dim:
        raise MismatchError(
            f"{d}: the probe expects {probe.input_dim}-d embeddings, but the manifest's backbone makes {dim}-d ones"
        )
    if isinstance(probe.backbone, dict):
        check_same_backbone(
            probe.backbone,
            manifest.backbone,
            f"the embeddings the probe of {d} was fitted on",
            f"the indexed embeddings (manifest of {d})",
        )
    try:
        n_items, labelled = count_items(d / ITEMS_FILE)
    except Exception as e:
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
    manifest, raw = Manifest.read(d)
    _verify_files(d, manifest.files, verify)
    probe = load_probe(d / "probe")
    if probe.bits != manifest.bits:
        raise MismatchError(f"{d}: the probe makes {probe.bits}-bit codes but the manifest says {manifest.bits} bits")
    try:
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0  # maps flat codes and IVF lists alike
        index = faiss.read_index_binary(str(d / INDEX_FILE), flags)
    except (RuntimeError, MemoryError, ValueError) as e:  # MemoryError: a damaged size field
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IntegrityError(f"{d}: cannot read {INDEX_FILE}: {msg}") from None
    _check_consistency(d, manifest, probe, index, verify)
    if manifest.format >= 2:
        problem = manifest.checksum_problem(raw)
        if problem:
            raise IntegrityError(f"{d / MANIFEST} {problem}")
    else:
        logger.warning(
            "%s has index format 1, whose manifest carries no checksum of its own: rebuild it to have it verified", d
        )
    if manifest.faiss_version and manifest.faiss_version.split(".")[:2] != faiss.__version__.split(".")[:2]:
        logger.info("%s was written by faiss %s, read by faiss %s", d, manifest.faiss_version, faiss.__version__)
    tables = None
    if manifest.index.kind == "ivf":
        index.nprobe = int(manifest.index.nprobe)
    elif manifest.index.kind == "mih":
        try:
            tables = MIHTables.load(d, manifest.bits, manifest.ntotal, int(manifest.index.tables), mmap=mmap)
        except Exception as e:
            raise IntegrityError(f"{d}: the multi-index tables are unreadable: {type(e).__name__}: {e}") from None
    return HashIndex(d, manifest, index, probe, tables)
