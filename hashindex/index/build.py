"""The build stage: embeddings + probe → packed codes → an index folder with a manifest.

An index folder holds::

    index.faiss        faiss binary index (IndexBinaryFlat or IndexBinaryIVF); position = item id
    items.h5           id → name, source index, labels (:mod:`hashindex.index.items`)
    probe/             a copy of the probe (probe.json + weights.safetensors)
    manifest.json      bits, ntotal, index type and parameters, faiss version, probe hash, backbone,
                       the embeddings' provenance, and the sha256 and size of every file

Written into a temporary sibling and published by one rename (:func:`~hashindex.core.durable.publish_folder`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from hashindex.core.codes import MIN_PROBE_BITS, check_bits
from hashindex.core.config import IndexConfig
from hashindex.core.durable import check_new_folder, publish_folder
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.spec import check_same_backbone, sha256_file
from hashindex.core.version import __version__
from hashindex.index.load import HashIndex, load_index
from hashindex.index.manifest import INDEX_FILE, ITEMS_FILE, Manifest
from hashindex.probe.artifact import PROBE_JSON, PROBE_WEIGHTS, Probe, load_probe, probe_hash
from hashindex.store.reader import Embeddings
from hashindex.store.schema import write_meta

logger = logging.getLogger(__name__)


IVF_TRAIN_ROWS = 1_000_000  # k-means sample: faiss turns training codes into float vectors


def make_faiss_index(codes: np.ndarray, config: IndexConfig):
    """A faiss binary index over packed codes (ids are row positions); ``config`` resolved.

    flat, lookup and mih indexes keep their codes in an ``IndexBinaryFlat`` (the lookup table is
    built when loaded, mih tables are files of their own). IVF centroids are trained on a uniform
    sample of at most ``IVF_TRAIN_ROWS`` codes (faiss converts the training codes to floats, 32x
    their size; its k-means uses at most 256 a list).
    """
    import faiss

    bits = codes.shape[1] * 8
    if config.kind != "ivf":
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


def check_probe_fits(probe: Probe, emb: Embeddings, probe_dir) -> None:
    """Raises MismatchError unless the probe was fitted on embeddings like ``emb`` (width, backbone)."""
    if probe.input_dim != emb.dim:
        raise MismatchError(
            f"the probe expects {probe.input_dim}-d embeddings, but {emb.path} holds {emb.dim}-d embeddings"
        )
    if probe.backbone is not None:
        where = f"the embeddings the probe {probe_dir} was fitted on"
        check_same_backbone(probe.backbone, emb.backbone, where, f"the embeddings {emb.path}")
    check_bits(probe.bits, MIN_PROBE_BITS)


def encode_all(probe: Probe, emb: Embeddings, chunk: int = 65536) -> np.ndarray:
    """Packed codes of every row of an embeddings file, streamed: peak memory is codes + a chunk."""
    codes = np.empty((emb.n, probe.bits // 8), np.uint8)
    for s in range(0, emb.n, chunk):
        codes[s : s + chunk] = probe.encode(emb.embeddings(slice(s, s + chunk)))
    return codes


def write_index(
    emb: Embeddings,
    probe_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    codes: np.ndarray,
    config: IndexConfig,
    *,
    seconds: float = 0.0,
    tables=None,
    meta: dict | None = None,
) -> HashIndex:
    """Write the index folder of ``codes`` (made by the probe in ``probe_dir`` from ``emb``),
    published atomically, and load it back.

    Args:
        emb: the database embeddings (their names, labels and provenance go into the folder).
        probe_dir: a folder written by ``fit-probe``.
        out_dir: the index folder to create (must not exist or be empty).
        codes: the packed codes, one row per embedding.
        config: a resolved index config (a concrete kind: ``auto`` is chosen by the caller).
        seconds: time spent so far (encoding, choosing), recorded with the build's own.
        tables: multi-index tables already built for ``codes`` (mih; else built here).
        meta: metadata columns of the items (field -> one value per row).

    Raises:
        InputError: an existing non-empty output folder, no embeddings.
    """
    import faiss

    from hashindex.index.mih import MIHTables

    out = check_new_folder(out_dir)
    if emb.n == 0:
        raise InputError(f"{emb.path} holds no embeddings (0 rows; see its /failures): nothing to index")
    t0 = time.perf_counter()
    index = make_faiss_index(codes, config)
    if config.kind == "mih" and tables is None:
        tables = MIHTables.build(codes, config.tables)
    build_seconds = seconds + time.perf_counter() - t0
    probe = load_probe(probe_dir)

    def fill(tmp: Path) -> None:
        faiss.write_index_binary(index, str(tmp / INDEX_FILE))
        rels = [INDEX_FILE, ITEMS_FILE, f"probe/{PROBE_JSON}", f"probe/{PROBE_WEIGHTS}"]
        rels += tables.save(tmp) if tables is not None else []
        (tmp / "probe").mkdir()
        for name in (PROBE_JSON, PROBE_WEIGHTS):
            shutil.copyfile(Path(probe_dir) / name, tmp / "probe" / name)
        with h5py.File(tmp / ITEMS_FILE, "w") as f:
            with h5py.File(emb.path, "r") as src:  # copied inside HDF5: names never become Python objects
                for name in ("names", "source_index", "labels", "meta"):
                    if name in src:
                        src.copy(src[name], f, name)
            if meta and "meta" in f:
                del f["meta"]  # given explicitly: it replaces the file's own
            write_meta(f, meta)
            f.attrs["label_names"] = json.dumps(emb.label_names)
        files = {rel: {"sha256": sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size} for rel in rels}
        probe_info = {"method": probe.method, "sha256": probe_hash(tmp / "probe")}
        Manifest(
            bits=probe.bits,
            ntotal=int(index.ntotal),
            index=config,
            probe={**probe_info, "supervised": probe.config.get("supervised", False)},
            backbone=emb.backbone.to_dict(),
            embeddings=emb.provenance(),
            files=files,
            hashindex_version=__version__,
            faiss_version=faiss.__version__,
            build_seconds=round(build_seconds, 3),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ).write(tmp)

    publish_folder(fill, out)
    logger.info("built %s index of %d codes (%d bits) in %.2fs", config.kind, index.ntotal, probe.bits, build_seconds)
    return load_index(out)
