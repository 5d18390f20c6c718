"""The build stage: embeddings + probe → packed codes → faiss binary index folder with a manifest.

An index folder holds::

    index.faiss        faiss binary index (IndexBinaryFlat or IndexBinaryIVF); position = item id
    items.h5           id → name (path or split/index), source index, labels
    probe/             a copy of the probe (probe.json + weights.safetensors)
    manifest.json      bits, ntotal, index type and parameters, faiss version, probe hash, backbone,
                       the embeddings' provenance, and the sha256 and size of every file

Loading verifies every file against the manifest (:mod:`hashindex.index.manifest`) and refuses a
mismatch. Loading needs faiss, h5py and NumPy, not torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hashindex.core.codes import MIN_PROBE_BITS, check_bits
from hashindex.core.config import IndexConfig, IndexKind, check_nprobe  # noqa: F401 (IndexConfig, IndexKind re-exported)
from hashindex.core.durable import check_new_folder, publish_folder
from hashindex.core.errors import InputError, IntegrityError, MismatchError
from hashindex.core.spec import check_same_backbone, sha256_file
from hashindex.core.version import __version__
from hashindex.index.lookup import MAX_LOOKUP_BITS, HammingLookup
from hashindex.index.manifest import INDEX_FILE, ITEMS_FILE, MANIFEST, Manifest
from hashindex.probe.artifact import PROBE_JSON, PROBE_WEIGHTS, Probe, load_probe, probe_hash
from hashindex.store.reader import Embeddings, check_same_embeddings, open_embeddings
from hashindex.store.schema import as_str

logger = logging.getLogger(__name__)


# -- faiss accessors: one small function per faiss internal the project relies on --------------


def stored_codes(fi) -> np.ndarray:
    """The packed codes held by a faiss binary index, ``(ntotal, bits // 8)``, in id order."""
    import faiss

    if isinstance(fi, faiss.IndexBinaryFlat):
        return faiss.vector_to_array(fi.xb).reshape(fi.ntotal, fi.code_size)
    fi.make_direct_map()
    return fi.reconstruct_n(0, fi.ntotal)


def flat_contents(fi) -> tuple[np.ndarray, np.ndarray | None]:
    """``(codes, ids)`` of a flat binary index: ids None when they are the row positions, the
    id map's ids when it is an ``IndexBinaryIDMap`` (a live snapshot's)."""
    import faiss

    if isinstance(fi, faiss.IndexBinaryIDMap):
        return stored_codes(faiss.downcast_IndexBinary(fi.index)), faiss.vector_to_array(fi.id_map)
    return stored_codes(fi), None


def is_ivf(fi) -> bool:
    """Whether a faiss binary index is an inverted-file index (it has lists and ``nprobe``)."""
    import faiss

    return isinstance(fi, faiss.IndexBinaryIVF)


IVF_TRAIN_ROWS = 1_000_000  # k-means sample: faiss turns training codes into float vectors


def make_faiss_index(codes: np.ndarray, config: IndexConfig):
    """A faiss binary index over packed codes (ids are row positions); ``config`` resolved.

    ``lookup`` indexes store their codes in a flat index; the table is built when loaded. IVF
    centroids are trained on a uniform sample of at most ``IVF_TRAIN_ROWS`` codes (faiss
    converts the training codes to floats, 32x their size; its k-means uses at most 256 a list).
    """
    import faiss

    bits = codes.shape[1] * 8
    if config.kind == "lookup" and bits > MAX_LOOKUP_BITS:
        raise InputError(
            f"the lookup index serves codes of at most {MAX_LOOKUP_BITS} bits, not {bits}: use flat or ivf"
        )
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
    """A loaded, verified index folder (or an in-memory one: :meth:`from_codes`)."""

    path: Path | None
    manifest: Manifest
    faiss_index: object
    probe: Probe
    lookup: HammingLookup | None = None
    _items: dict | None = None
    # (device, engine) of a search on a GPU (hashindex.search.gpu); not copied by replace().
    _device_searcher: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, probe: Probe, config: IndexConfig = IndexConfig(), items: dict | None = None
    ) -> HashIndex:
        """An index held in memory only (for benchmarks and tests): the same search paths as a
        loaded folder, no files. ``items`` defaults to names ``item<i>`` without labels."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        cfg = config.resolved(len(codes))
        fi = make_faiss_index(codes, cfg)
        probe_info = {"method": probe.method, "sha256": "", "supervised": bool(probe.config.get("supervised", False))}
        manifest = Manifest(codes.shape[1] * 8, len(codes), cfg, probe_info, probe.backbone or {})
        lookup = HammingLookup(codes) if cfg.kind == "lookup" else None
        items = items or {
            "names": [f"item{i}" for i in range(len(codes))],
            "source_index": np.arange(len(codes)),
            "labels": None,
            "label_names": None,
        }
        return cls(None, manifest, fi, probe, lookup, items)

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
        """The packed codes of every item, ``(ntotal, bits // 8)``, in id order."""
        return stored_codes(self.faiss_index)

    def items(self, names: bool = True) -> dict:
        """``names`` (list[str]; None unless ``names``), ``source_index`` (int64), ``labels``
        (uint8 or None), ``label_names``."""
        if self._items is not None:
            return self._items
        with h5py.File(self.path / ITEMS_FILE, "r") as f:
            return {
                "names": [as_str(s) for s in f["names"][()]] if names else None,
                "source_index": f["source_index"][()],
                "labels": f["labels"][()] if "labels" in f else None,
                "label_names": json.loads(f.attrs.get("label_names", "null")),
            }

    def set_nprobe(self, nprobe: int | None) -> None:
        """Change the IVF search breadth (ignored by flat indexes).

        Raises:
            InputError: outside ``1..nlist``.
        """
        if nprobe is None or self.kind != "ivf":
            return
        self.faiss_index.nprobe = check_nprobe(nprobe, self.manifest.index.nlist)

    def check_queries(self, queries: Embeddings) -> None:
        """Raises MismatchError unless query embeddings come from the index's backbone."""
        check_same_backbone(
            self.manifest.backbone, queries.backbone, f"the codes of index {self.path}", f"the queries {queries.path}"
        )

    def check_database(self, emb: Embeddings) -> None:
        """Raises MismatchError unless ``emb`` is the embeddings file the index was built from
        (compared by the checksums recorded in both; see :func:`~hashindex.store.check_same_embeddings`)."""
        check_same_embeddings(self.manifest.embeddings, emb, f"index {self.path}")

    def database(self) -> Embeddings:
        """The embeddings file the index was built from, checked to be that file.

        Raises:
            InputError: it is gone.
            MismatchError: the file at its path is another one now.
        """
        path = self.manifest.embeddings.get("path")
        if not path or not os.path.exists(path):
            raise InputError(f"the database embeddings {path} of index {self.path} are gone: pass them explicitly")
        emb = open_embeddings(path)
        self.check_database(emb)
        return emb


def build_index(
    emb: Embeddings, probe_dir: str | os.PathLike, out_dir: str | os.PathLike, config: IndexConfig = IndexConfig()
) -> HashIndex:
    """Encode every embedding with the probe and write an index folder (published atomically).

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

    out = check_new_folder(out_dir)
    if emb.n == 0:
        raise InputError(f"{emb.path} holds no embeddings (0 rows; see its /failures): nothing to index")
    probe = load_probe(probe_dir)
    if probe.input_dim != emb.dim:
        raise MismatchError(
            f"the probe expects {probe.input_dim}-d embeddings, but {emb.path} holds {emb.dim}-d embeddings"
        )
    if probe.backbone is not None:
        check_same_backbone(
            probe.backbone,
            emb.backbone,
            f"the embeddings the probe {probe_dir} was fitted on",
            f"the embeddings {emb.path}",
        )
    check_bits(probe.bits, MIN_PROBE_BITS)
    cfg = config.resolved(emb.n)
    t0 = time.perf_counter()
    codes = np.empty((emb.n, probe.bits // 8), np.uint8)  # streamed: peak memory is codes + a chunk
    for s in range(0, emb.n, 65536):
        codes[s : s + 65536] = probe.encode(emb.embeddings(slice(s, s + 65536)))
    index = make_faiss_index(codes, cfg)
    build_seconds = time.perf_counter() - t0

    def fill(tmp: Path) -> None:
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
        files = {
            rel: {"sha256": sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size}
            for rel in (INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}")
        }
        Manifest(
            bits=probe.bits,
            ntotal=int(index.ntotal),
            index=cfg,
            probe={
                "method": probe.method,
                "sha256": probe_hash(tmp / "probe"),
                "supervised": probe.config.get("supervised", False),
            },
            backbone=emb.backbone.to_dict(),
            embeddings=emb.provenance(),
            files=files,
            hashindex_version=__version__,
            faiss_version=faiss.__version__,
            build_seconds=round(build_seconds, 3),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ).write(tmp)

    publish_folder(fill, out)
    logger.info("built %s index of %d codes (%d bits) in %.2fs", cfg.kind, index.ntotal, probe.bits, build_seconds)
    return load_index(out)


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
        with h5py.File(d / ITEMS_FILE, "r") as f:
            n_items = f["names"].shape[0]
            labelled = f["labels"].shape[0] if "labels" in f else n_items
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
    lookup = None
    if manifest.index.kind == "ivf":
        index.nprobe = int(manifest.index.nprobe)
    elif manifest.index.kind == "lookup":
        lookup = HammingLookup(stored_codes(index))
    return HashIndex(d, manifest, index, probe, lookup)
