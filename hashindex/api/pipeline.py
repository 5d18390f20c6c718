"""The pipeline's steps as plain functions: ``embed`` → ``fit_probe`` → an index folder, and an
index folder straight from arrays (:mod:`hashindex.api.index` opens what they write). Each takes paths or opened artifacts, a config dataclass and/or its
fields as keyword options (``views=2``, ``bits=32``, ``kind="mih"``), verifies its inputs, and
returns the artifact it made.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from hashindex.core.config import EmbedConfig, FitConfig, IndexConfig
from hashindex.core.errors import InputError
from hashindex.store.reader import Embeddings, open_embeddings

logger = logging.getLogger(__name__)
# The parts of a folder made by `hashindex index` (or Index.from_embeddings): one per stage.
EMBEDDINGS_FILE, PROBE_DIR, PROJECT_INDEX = "embeddings.h5", "probe", "index"


def _config(cls, config, options: dict):
    """``config`` (default: the class's defaults) with ``options`` replacing its fields.

    Raises:
        InputError: an option that is not a field of the config.
    """
    config = config or cls()
    unknown = sorted(set(options) - set(cls.__dataclass_fields__))
    if unknown:
        raise InputError(
            f"unknown option {unknown[0]!r} for {cls.__name__} (fields: {', '.join(cls.__dataclass_fields__)})"
        )
    return replace(config, **options)


def _embeddings(embeddings, verify: bool) -> Embeddings:
    return embeddings if isinstance(embeddings, Embeddings) else open_embeddings(embeddings, verify=verify)


def embed(
    source,
    out,
    config: EmbedConfig | None = None,
    *,
    split="train",
    root=None,
    data_dir=None,
    limit=None,
    progress: bool = False,
    restart: bool = False,
    runner=None,
    metadata=None,
    **options,
):
    """Embed the images of ``source`` (a folder, list file, IDX folder, image file or
    ``fashion-mnist``; or an :class:`~hashindex.embedding.sources.ImageSource`) into the HDF5
    file ``out`` (see :func:`hashindex.embedding.run.embed`; ``metadata``: a sidecar of item
    metadata keyed by name, kept in the file for filters).

    Returns:
        An :class:`~hashindex.embedding.run.EmbedSummary`.
    """
    from hashindex.embedding.run import embed as run
    from hashindex.embedding.sources import ImageSource, open_source

    src = (
        source
        if isinstance(source, ImageSource)
        else open_source(str(source), split=split, root=root, data_dir=data_dir, limit=limit)
    )
    return run(
        src,
        out,
        _config(EmbedConfig, config, options),
        progress=progress,
        restart=restart,
        runner=runner,
        metadata=metadata,
    )


def finetune(
    source, out, config=None, *, split="train", root=None, data_dir=None, limit=None, progress: bool = False, **options
):
    """CroVCA's second mode: LoRA adapters on the backbone trained with a HashCoder on the images
    of ``source`` (see :func:`hashindex.probe.finetune.finetune`); ``options`` replace fields of
    the :class:`~hashindex.probe.finetune.FinetuneConfig`.

    Returns:
        A summary of what was written into ``out`` (``adapter.safetensors``, ``adapter.json``, ``probe/``).
    """
    from hashindex.embedding.sources import ImageSource, open_source
    from hashindex.probe.finetune import FinetuneConfig
    from hashindex.probe.finetune import finetune as run

    src = (
        source
        if isinstance(source, ImageSource)
        else open_source(str(source), split=split, root=root, data_dir=data_dir, limit=limit)
    )
    return run(src, out, _config(FinetuneConfig, config, options), progress=progress)


def fit_probe(
    embeddings, out=None, config: FitConfig | None = None, *, verify: bool = True, progress: bool = False, **options
):
    """Fit a hash probe (CroVCA by default) on an embeddings file; saved to the folder ``out``
    when given.

    Args:
        embeddings: a path or an opened :class:`~hashindex.store.reader.Embeddings`.
        out: a new folder for ``probe.json`` and ``weights.safetensors`` (None: not saved).
        config: fit options; ``options`` replace its fields (``bits=32``, ``supervised=True``).
        verify: check the file against its recorded checksums first.
        progress: show a progress bar.

    Returns:
        The :class:`~hashindex.probe.artifact.Probe`.
    """
    from hashindex.probe.fit import fit_probe as run

    probe = run(_embeddings(embeddings, verify), _config(FitConfig, config, options), progress=progress)
    if out is not None:
        probe.save(out)
    return probe


def write_index_folder(
    embeddings, probe, out, config: IndexConfig | None = None, *, verify: bool = True, metadata=None, **options
) -> Path:
    """Encode the embeddings with the probe and write an index folder (``kind="auto"``, the
    default, chooses the kind by measuring the collection: :mod:`hashindex.search.auto`).

    Args:
        embeddings: a path or an opened embeddings file.
        probe: a probe folder (made by :func:`fit_probe`).
        out: the index folder to create.
        config: index options; ``options`` replace its fields (``kind="mih"``).
        verify: check the embeddings file against its checksums first.
        metadata: item metadata: a sidecar file (CSV, JSON Lines, parquet) keyed by item name,
            or field -> one value per row of the embeddings, or one dict per row.

    Returns:
        The folder written.
    """
    from hashindex.embedding.metadata import metadata_columns, metadata_for, read_sidecar
    from hashindex.index.build import check_probe_fits, encode_all, write_index
    from hashindex.probe.artifact import load_probe
    from hashindex.search.auto import choose

    emb = _embeddings(embeddings, verify)
    cfg = _config(IndexConfig, config, options)
    p = load_probe(probe)
    check_probe_fits(p, emb, probe)
    meta = None  # read before the long work: errors first
    if isinstance(metadata, (str, os.PathLike)):
        meta = metadata_for(emb.names(), read_sidecar(metadata))
    elif metadata is not None:
        meta = metadata_columns(metadata, emb.n)
    t0 = time.perf_counter()
    codes = encode_all(p, emb)
    cfg, tables = choose(codes, cfg)
    write_index(emb, probe, out, codes, cfg, seconds=time.perf_counter() - t0, tables=tables, meta=meta)
    return Path(out)


def write_arrays_project(
    x,
    path,
    *,
    names=None,
    labels=None,
    label_names=None,
    views=None,
    metadata=None,
    model_name="arrays",
    fit: FitConfig | None = None,
    index: IndexConfig | None = None,
    progress: bool = False,
    **fit_options,
) -> Path:
    """An index straight from float embeddings: they are written as ``PATH/embeddings.h5``, a probe
    fitted into ``PATH/probe/`` and the index built into ``PATH/index/`` (the layout of
    ``hashindex index``; ``open_index(PATH)`` opens it). Queries by embedding; queries by image
    need an index made from images (``hashindex.embed``), whose backbone hashindex can run.

    Args:
        x: ``(n, D)`` float embeddings.
        path: a new folder.
        names, labels, label_names: per item (labels: class names or ids, or ``(n, C)`` 0/1 rows).
        views: ``(n, V, D)`` embeddings of augmented views, when there are some (CroVCA trains on
            feature-space views otherwise).
        metadata: field -> values, or one dict per item.
        model_name: what made the embeddings (recorded).
        fit, index: the probe's and the index's options; ``fit_options`` replace fields of ``fit``.
        progress: show progress bars.

    Returns:
        The folder (open it with :func:`hashindex.open_index`): the same codes and ids as
        ``fit-probe`` and ``build`` make from the same embeddings file.

    Raises:
        InputError: ``path`` exists and is not empty, or bad arrays.
    """
    from hashindex.core.durable import check_new_folder
    from hashindex.embedding.importer import import_arrays

    folder = check_new_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        emb_path = import_arrays(
            x,
            folder / EMBEDDINGS_FILE,
            names=names,
            labels=labels,
            label_names=label_names,
            views=views,
            model_name=model_name,
        )
        emb = open_embeddings(emb_path)
        fit_probe(emb, folder / PROBE_DIR, fit, verify=False, progress=progress, **fit_options)
        write_index_folder(emb, folder / PROBE_DIR, folder / PROJECT_INDEX, index, verify=False, metadata=metadata)
        return folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def project_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Where ``hashindex index`` keeps each stage's artifact inside its folder."""
    out = Path(out)
    return {"embeddings": out / EMBEDDINGS_FILE, "probe": out / PROBE_DIR, "index": out / PROJECT_INDEX}
