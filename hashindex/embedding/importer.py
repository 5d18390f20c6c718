"""The import stage: embeddings made elsewhere (CLIP shards, another pipeline) → an embeddings file.

The result is the ordinary schema-1 file written by :class:`~hashindex.store.EmbeddingsWriter`
(crash-safe, resumable, published atomically), with the backbone recorded as ``external``
under a user-given model name: probes and indexes are built from it as usual, queries by
embedding work, queries by image are refused (hashindex cannot re-create the model).

Rows stream through in chunks (see :mod:`hashindex.embedding.readers`), so memory is bounded by a chunk
whatever the collection's size; only labels are read whole (one small value per row), because
the number of classes must be known before the first row is written. A bad shard (other width,
NaN or inf rows, truncated, unreadable) stops the import with one error naming the shard, and
nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.durable import OutputLock
from hashindex.core.errors import InputError
from hashindex.core.spec import external_spec
from hashindex.embedding.metadata import metadata_for, read_sidecar
from hashindex.embedding.readers import ArrayReader, RowStream, open_array, split_spec
from hashindex.store.resume import partial_path, remove_resume_folder
from hashindex.store.writer import EmbeddingsWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportConfig:
    """Options of ``hashindex import`` (see its ``--help``).

    ``names`` / ``labels`` are sidecar sources (a text file with one value per line, or an array
    source such as ``x.npy`` or ``x.h5:/labels``); ``name_column`` / ``label_column`` read them
    from the parquet sources instead. Labels are class ids or class names (one per row) or
    ``(n, C)`` 0/1 multi-hot rows. ``views_from``: one source per cached view, row-aligned with
    the embeddings. ``chunk`` is the number of rows held in memory at a time. ``metadata``: a
    sidecar of item metadata keyed by name (CSV, JSON Lines, parquet), kept in the file.
    """

    model_name: str = "external"
    embedding_column: str | None = None
    names: str | None = None
    labels: str | None = None
    name_column: str | None = None
    label_column: str | None = None
    views_from: tuple[str, ...] = ()
    chunk: int = 65536
    metadata: str | None = None


@dataclass
class ImportSummary:
    path: Path
    rows: int
    dim: int
    views: int
    shards: int

    def describe(self) -> str:
        v = f", {self.views} views" if self.views else ""
        return f"wrote {self.path}: {self.rows} embeddings of {self.dim} dimensions from {self.shards} shard(s){v}"


class _TextLines(ArrayReader):
    """A sidecar text file, one value per line (names, or class names/ids as labels)."""

    def __init__(self, spec: str):
        self.spec, self.path = spec, Path(spec)
        try:
            with open(self.path, "rb") as fh:
                self.rows = sum(1 for _ in fh)
        except OSError as e:
            raise InputError(f"{spec}: cannot read: {e.strerror}") from None
        self.shape = (self.rows,)

    def chunks(self, chunk: int):
        with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
            buf = []
            for line in fh:
                buf.append(line.rstrip("\r\n"))
                if len(buf) == chunk:
                    yield np.array(buf, dtype=object)
                    buf = []
            if buf:
                yield np.array(buf, dtype=object)


def _sidecar(spec: str) -> ArrayReader:
    path, inner = split_spec(spec)
    if path.suffix.lower() in (".txt", ".tsv", ".csv", ".lst", ".list") and inner is None:
        if not path.is_file():
            raise InputError(f"{spec}: no such file")
        return _TextLines(spec)
    return open_array(spec)


def _text(values) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _read_labels(readers: list[ArrayReader], chunk: int) -> tuple[np.ndarray, list[str]]:
    """All labels as ``(n, C)`` multi-hot uint8 and C class names."""
    parts = [c for r in readers for c in r.chunks(chunk)]
    if not parts:
        return np.zeros((0, 0), np.uint8), []
    if np.asarray(parts[0]).ndim == 2:
        values = np.concatenate(parts)
    else:
        values = np.concatenate([np.asarray(p, dtype=object) if p.dtype.kind in "OSU" else p for p in parts])
    return labels_from_values(values, readers[0].spec)


def labels_from_values(values, where: str = "labels", label_names=None) -> tuple[np.ndarray, list[str]]:
    """``(n, C)`` multi-hot uint8 and C class names from class ids, class names (sorted, so the
    same names give the same columns) or 0/1 rows.

    Raises:
        InputError: negative ids, non-binary rows, or more than 4096 classes.
    """
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if values.ndim == 2:  # already multi-hot
        if not np.isin(values, (0, 1)).all():
            raise InputError(f"{where}: 2-D labels must be 0/1 (multi-hot)")
        names = list(label_names) if label_names else [str(c) for c in range(values.shape[1])]
        return values.astype(np.uint8), names
    if values.dtype.kind in "iu":
        if len(values) and values.min() < 0:
            raise InputError(f"{where}: class ids must be >= 0")
        classes = [str(c) for c in range(int(values.max()) + 1 if len(values) else 0)]
        if label_names:
            classes = list(label_names)
        ids = values.astype(np.int64)
    else:
        names = np.array(_text(values), dtype=object)
        classes = list(label_names) if label_names else sorted(set(names.tolist()))
        lookup = {c: i for i, c in enumerate(classes)}
        if any(n not in lookup for n in names):
            raise InputError(f"{where}: labels that are not among the label names given")
        ids = np.array([lookup[n] for n in names], np.int64)
    if len(classes) > 4096:
        raise InputError(f"{where}: {len(classes)} classes; labels must be class ids, names or multi-hot rows")
    if len(ids) and ids.max() >= len(classes):
        raise InputError(f"{where}: class id {int(ids.max())} but only {len(classes)} label names")
    lab = np.zeros((len(ids), len(classes)), np.uint8)
    lab[np.arange(len(ids)), ids] = 1
    return lab, classes


def import_arrays(x, out, *, names=None, labels=None, label_names=None, views=None, model_name: str = "arrays") -> Path:
    """Write float embeddings held in memory as an embeddings file (an external backbone named
    ``model_name``; ``views``: ``(n, V, D)`` augmented views, if any).

    Raises:
        InputError: non-finite or non-2-D embeddings, mismatched names, labels or views.
    """
    from hashindex.core.validate import check_embeddings

    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"embeddings must be a non-empty 2-D array (n, D), got shape {x.shape}")
    x = check_embeddings(x, x.shape[1])
    n, dim = x.shape
    names = [str(i) for i in range(n)] if names is None else [str(v) for v in names]
    if len(names) != n:
        raise InputError(f"{len(names)} names for {n} embeddings")
    lab = None
    if labels is not None:
        lab, label_names = labels_from_values(labels, "labels", label_names)
        if len(lab) != n:
            raise InputError(f"{len(lab)} labels for {n} embeddings")
    if views is not None:
        views = np.asarray(views, np.float32)
        if views.ndim != 3 or views.shape[0] != n or views.shape[2] != dim or not np.isfinite(views).all():
            raise InputError(f"views must be finite floats of shape ({n}, V, {dim}), got {views.shape}")
    attrs = {
        "backbone": json.dumps(external_spec(model_name, dim).to_dict(), sort_keys=True),
        "augment": json.dumps(
            {"kind": "imported", "views_from": ["arrays"] if views is not None else []}, sort_keys=True
        ),
        "views": 0 if views is None else views.shape[1],
        "seed": 0,
        "source": json.dumps({"kind": "arrays", "location": None, "n": n}, sort_keys=True),
        "label_names": json.dumps(label_names if lab is not None else None),
    }
    writer = EmbeddingsWriter(
        out, n=n, dim=dim, views=attrs["views"], label_dim=0 if lab is None else lab.shape[1], attrs=attrs
    )
    writer.append(items_done=n, embeddings=x, views=views, labels=lab, names=names, source_index=np.arange(n))
    return writer.finish()


def _check_rows(what: str, readers: list[ArrayReader], n: int) -> None:
    got = sum(r.rows for r in readers)
    if got != n:
        raise InputError(f"{what} ({', '.join(r.spec for r in readers[:2])}) has {got} rows, the embeddings have {n}")


def _open_sources(sources, config: ImportConfig) -> tuple[list[ArrayReader], int]:
    if not sources:
        raise InputError("give at least one SOURCE")
    readers = [open_array(s, config.embedding_column) for s in sources]
    dim = None
    for r in readers:
        if len(r.shape) != 2:
            raise r.fail(f"holds an array of shape {tuple(r.shape)}; embeddings must be 2-D (rows, dimensions)")
        if r.dtype is not None and r.dtype.kind != "f":
            raise r.fail(f"holds {r.dtype} values; embeddings must be floating point")
        if dim is None:
            dim = int(r.shape[1])
        elif r.shape[1] != dim:
            raise r.fail(
                f"has width {r.shape[1]}, but {readers[0].spec} has {dim}: all shards must have the same width"
            )
    if dim == 0:
        raise readers[0].fail("has zero-width rows")
    return readers, dim


def _finite(x: np.ndarray, origin, what: str) -> np.ndarray:
    if x.dtype.kind != "f":
        raise origin[0][0].fail(f"holds {x.dtype} values; {what} must be floating point")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        for reader, off, length in origin:
            if j < length:
                raise reader.fail(
                    f"row {off + j} of the {what} holds NaN or inf values ({int(bad.sum())} bad rows in this chunk)"
                )
            j -= length
    return x


def _discard(writer: EmbeddingsWriter | None, out: Path) -> None:
    if writer is not None:  # only a folder this run wrote to (not one the writer refused)
        writer._buffer = []  # nothing pending to commit
        remove_resume_folder(partial_path(out))


def import_embeddings(
    sources: list[str], out: str | os.PathLike, config: ImportConfig = ImportConfig(), *, progress: bool = True
) -> ImportSummary:
    """Import embeddings made elsewhere into a hashindex embeddings file.

    Args:
        sources: one or more array sources, concatenated in the order given (``.npy`` shards,
            ``.npz``, parquet, ``file.h5:/dataset``).
        out: the embeddings file to write.
        config: names, labels, views and the model name.
        progress: show a progress bar.

    Returns:
        What was written.

    Raises:
        InputError: a bad shard (named), mismatched sidecars, an existing output.
        OutputLockedError: another process writes ``out``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if config.chunk <= 0:
        raise InputError(f"the chunk size must be positive, got {config.chunk}")
    if not config.model_name.strip():
        raise InputError("--model-name must not be empty")
    if not out.parent.exists():
        raise InputError(f"output folder {out.parent} does not exist")
    sidecar = read_sidecar(config.metadata) if config.metadata else None
    readers, dim = _open_sources(sources, config)
    n = sum(r.rows for r in readers)
    if n == 0:
        raise InputError("the sources hold no rows")
    name_readers = None
    if config.names and config.name_column:
        raise InputError("give names as a sidecar file or a parquet column, not both")
    if config.names:
        name_readers = [_sidecar(config.names)]
    elif config.name_column:
        name_readers = [open_array(s, config.name_column) for s in sources]
    if name_readers:
        _check_rows("the names", name_readers, n)
    labels, label_names = None, None
    if config.labels and config.label_column:
        raise InputError("give labels as a sidecar file or a parquet column, not both")
    if config.labels or config.label_column:
        lab_readers = (
            [_sidecar(config.labels)] if config.labels else [open_array(s, config.label_column) for s in sources]
        )
        _check_rows("the labels", lab_readers, n)
        labels, label_names = _read_labels(lab_readers, config.chunk)
    view_readers = [open_array(v, config.embedding_column) for v in config.views_from]
    for v in view_readers:
        _check_rows(f"the view source {v.spec}", [v], n)
        if len(v.shape) != 2 or v.shape[1] != dim:
            raise v.fail(f"holds shape {tuple(v.shape)}; a view source must hold ({n}, {dim}) rows like the embeddings")
    spec = external_spec(config.model_name, dim)
    attrs = {
        "backbone": json.dumps(spec.to_dict(), sort_keys=True),
        "augment": json.dumps({"kind": "imported", "views_from": list(config.views_from)}, sort_keys=True),
        "views": len(view_readers),
        "seed": 0,
        "source": json.dumps({"kind": "import", "location": [str(s) for s in sources], "n": n}, sort_keys=True),
        "label_names": json.dumps(label_names),
    }
    lock = OutputLock(out).acquire()
    writer: EmbeddingsWriter | None = None
    ok = False
    try:
        writer = EmbeddingsWriter(
            out,
            n=n,
            dim=dim,
            views=len(view_readers),
            label_dim=0 if labels is None else labels.shape[1],
            attrs=attrs,
            lock=lock,
            item_meta=None if sidecar is None else (lambda got: metadata_for(got, sidecar)),
        )
        main = RowStream(readers, config.chunk)
        names = RowStream(name_readers, config.chunk) if name_readers else None
        views = [RowStream([v], config.chunk) for v in view_readers]
        done = writer.items_done
        bar = tqdm(total=n, initial=done, unit="row", desc=f"import {out.name}", disable=not progress)
        pos = 0
        while pos < n:
            m = min(config.chunk, n - pos)
            x, origin = main.take(m)
            nm = names.take(m)[0] if names else None
            vs = [v.take(m) for v in views]
            if pos + m <= done:  # committed by an interrupted run: skip
                pos += m
                continue
            x = _finite(x, origin, "embeddings")
            v = None
            if vs:
                v = np.stack([_finite(a, o, "view") for a, o in vs], axis=1)
            row_names = _text(nm) if nm is not None else [f"{i}" for i in range(pos, pos + m)]
            writer.append(
                items_done=pos + m,
                embeddings=x,
                views=v,
                labels=None if labels is None else labels[pos : pos + m],
                names=row_names,
                source_index=np.arange(pos, pos + m),
            )
            pos += m
            bar.update(m)
        bar.close()
        path = writer.finish()
        ok = True
    except StopIteration:  # a reader yielded fewer rows than its header promised
        bad = InputError(f"a source ended early ({', '.join(r.spec for r in readers[:3])}): truncated?")
        _discard(writer, out)
        raise bad from None
    except InputError:
        _discard(writer, out)  # a bad shard leaves nothing behind: its rows must not be resumed
        raise
    finally:
        if writer is not None and not ok:
            writer.close()  # interrupted: keep what is committed, so a re-run resumes
        lock.release(remove=True)
    logger.info("imported %d rows of %d dimensions into %s", n, dim, path)
    return ImportSummary(path, n, dim, len(view_readers), len(readers))
