"""``Index``: an open index, the one object the CLI, the service and Python users search through.

It sees every commit (additions and removals by any process, after :meth:`Index.refresh`), keeps
its probe and, once an image query came, its backbone loaded between searches, and searches
image paths, PIL images, uint8 arrays, float embeddings or ids through one path. Opening an index
and searching it by codes or embeddings never imports torch; an image query on the CPU neither
(the backbone's ONNX export answers).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from hashindex.api.pipeline import PROJECT_INDEX, write_arrays_project, write_index_folder
from hashindex.api.queries import classify
from hashindex.api.results import Hits, SearchResults
from hashindex.core.errors import InputError
from hashindex.core.validate import check_k
from hashindex.embedding.metadata import metadata_source
from hashindex.index.manifest import MANIFEST
from hashindex.live.live_index import LiveIndex, open_live
from hashindex.search.filters import Allowed


def index_folder(path: str | os.PathLike) -> Path:
    """The index folder ``path`` names: itself, or the ``index/`` inside a folder made by
    ``hashindex index`` (which also holds the embeddings and the probe)."""
    p = Path(path)
    inner = p / PROJECT_INDEX
    if not (p / MANIFEST).exists() and (inner / MANIFEST).exists():
        return inner
    return p


class Index:
    """An open index (made by :func:`open_index`, :func:`hashindex.build_index` or
    :meth:`Index.from_embeddings`).

    Args:
        live: the opened folder.
        weights, adapter, device, runtime: how to run the backbone for image queries and
            additions (see :class:`~hashindex.backbone.features.ImageEmbedder`).
    """

    def __init__(self, live: LiveIndex, *, weights=None, adapter=None, device="auto", runtime="auto"):
        self._live = live
        self._backbone_options = {"weights": weights, "adapter": adapter, "device": device, "runtime": runtime}
        self._embedder = None
        self.last_failures = 0  # images the last add from files could not decode

    # -- what it is --------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._live.path

    @property
    def snapshot(self):
        """The current immutable view (:class:`~hashindex.live.snapshot.Snapshot`): hold it for
        several reads that must agree."""
        return self._live.snapshot

    @property
    def live(self) -> LiveIndex:
        return self._live

    @property
    def ntotal(self) -> int:
        return self.snapshot.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def bits(self) -> int:
        return self.snapshot.bits

    @property
    def kind(self) -> str:
        return self.snapshot.kind

    @property
    def backbone(self) -> str:
        """The backbone's model name."""
        return str(self._live.manifest.backbone.get("model"))

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, items={self.ntotal}, bits={self.bits}, kind={self.kind!r}, backbone={self.backbone!r})"

    def info(self) -> dict:
        """Items, kind, bits, generation, commits, next id, the probe's age, the backbone."""
        return self._live.info()

    def item(self, item_id: int) -> dict:
        """``{"id", "name", "label", "source_index"}`` of one item (InputError when unknown)."""
        return self.snapshot.item(item_id)

    def refresh(self) -> bool:
        """Load commits made by other processes since it was opened; True when there were some."""
        return self._live.refresh()

    # -- images ------------------------------------------------------------------------------

    @property
    def embedder(self):
        """Features of decoded images by the index's backbone (loaded on first use, then kept)."""
        if self._embedder is None:
            from hashindex.backbone.features import ImageEmbedder

            self._embedder = ImageEmbedder(self._live.manifest.backbone, **self._backbone_options)
        return self._embedder

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """``(n, D)`` features of decoded RGB uint8 images by the index's backbone."""
        return self.embedder(images)

    # -- search ------------------------------------------------------------------------------

    def allowed(self, where=None, ids=None, snapshot=None) -> Allowed | None:
        """The rows of ``snapshot`` (default: the current one) that ``where`` and ``ids`` allow."""
        return (snapshot or self.snapshot).allowed(where, ids)

    def check_queries(self, embeddings) -> None:
        """Raises MismatchError unless an embeddings file comes from the index's backbone."""
        self.snapshot.base.check_queries(embeddings)

    def search(
        self,
        queries,
        k: int = 10,
        *,
        rerank=None,
        asymmetric=False,
        device="auto",
        where=None,
        ids=None,
        nprobe=None,
        names=None,
    ) -> SearchResults:
        """The k nearest items of each query by Hamming distance (equal distances by id).

        Args:
            queries: image paths or folders, PIL images, uint8 arrays ``(H, W, 3)``, float
                embeddings ``(n, D)``, item ids, or a list of these.
            k: results per query (more than the items allowed gives all of them).
            rerank: re-rank the Hamming top ``rerank·k`` by float cosine (or, with
                ``asymmetric``, by the asymmetric distance; R defaults to 4 then).
            asymmetric: re-rank by the query's sigmoid(logits) against the items' bits.
            device: where a flat index is scanned (``auto``: the GPU when there is one).
            where: a filter on labels and metadata (``{"label": "Trouser"}``, ``"year>=2010"``;
                see :mod:`hashindex.search.filters`): the k nearest items that satisfy it.
            ids: only among these item ids.
            nprobe: IVF lists visited per query.
            names: what to call the queries in the results (default: their paths, or
                ``image 0``, ``embedding 0``, ``id 5``).

        Returns:
            One :class:`~hashindex.api.results.Hits` per query, in order.

        Raises:
            InputError: bad k or queries, an unreadable image, an unknown id or filter field.
            MismatchError: embeddings of another width.
        """
        k = check_k(k)
        snap = self.snapshot  # one view for the whole search
        allowed = snap.allowed(where, ids)
        draft = self.embedder.draft_size if _has_images(queries) else None
        batches, count = classify(queries, draft)
        if names is not None and len(names) != count:
            raise InputError(f"{len(names)} names for {count} queries")
        out: list[Hits | None] = [None] * count
        kw = {"nprobe": nprobe, "allowed": allowed}
        for b in batches:
            if b.kind == "ids":
                ranked = [snap.search_id(i, k, rerank, asymmetric, device, **kw) for i in b.values]
                parts = [(r.D, r.I, r.S) for r in ranked]
            else:
                x = self.embedder(b.values) if b.kind == "images" else np.stack(b.values)
                r = snap.search(x, k, rerank, asymmetric, device, **kw)
                parts = [
                    (r.D[i : i + 1], r.I[i : i + 1], None if r.S is None else r.S[i : i + 1])
                    for i in range(len(b.values))
                ]
            for name, pos, (d, rows, s) in zip(b.names, b.order, parts):
                name = name if names is None else str(names[pos])
                out[pos] = _hits(snap, name, d[0], rows[0], None if s is None else s[0])
        return SearchResults(out)

    # -- near-duplicates -----------------------------------------------------------------------

    def duplicates(self, queries=None, config=None, *, progress: bool = False, **options) -> list:
        """Near-duplicates: without ``queries``, every group of near-duplicate items of the index
        (records: ``group``, ``keep`` id, ``remove`` ids, ``items`` with id, name, label, keep,
        Hamming distance and cosine to the kept item); with ``queries`` (as :meth:`search` takes
        them), for each query the indexed items that are its near-duplicates (the check to run
        before :meth:`add`). Options: fields of :class:`~hashindex.core.config.DedupConfig`
        (``radius``, ``radius_bits``, ``min_cosine``, ``min_pixels``, ``keep``). Queries given as
        embeddings have no pixels: only their cosine confirms them.
        """
        from hashindex.core.config import DedupConfig
        from hashindex.dedup.find import find_duplicates, query_duplicates
        from hashindex.dedup.output import group_records, match_records
        from hashindex.dedup.pixels import thumbnail, thumbnails

        cfg = replace(config or DedupConfig(), **options)
        snap = self.snapshot
        if queries is None:
            return group_records(snap, find_duplicates(snap, cfg, progress=progress), cfg.keep)
        batches, count = classify(queries, self.embedder.draft_size if _has_images(queries) else None)
        out: list = [None] * count
        for b in batches:
            thumbs = None
            if b.kind == "ids":
                x = np.concatenate([snap.embedding_of(i) for i in b.values])
                # an unreadable file leaves a blank thumbnail, which agrees with none
                thumbs = thumbnails(snap, snap.positions(np.array(b.values, np.int64)))[0]
            elif b.kind == "images":
                x = self.embedder(b.values)
                thumbs = np.stack([thumbnail(v) for v in b.values])
            else:
                x = np.stack(b.values).astype(np.float32)
            q, rows, d, cos, pix = query_duplicates(snap, snap.probe.logits(x), x, cfg, thumbs)
            for local, pos in enumerate(b.order):
                sel = q == local
                found = match_records(snap, rows[sel], d[sel], cos[sel], pix[sel])
                out[pos] = {"query": b.names[local], "duplicates": found}
        return out

    # -- edits -------------------------------------------------------------------------------

    def add(
        self,
        items,
        names=None,
        labels=None,
        metadata=None,
        *,
        uploads=None,
        progress: bool = False,
        batch_size: int = 64,
    ) -> np.ndarray:
        """Add items as one durable commit; returns their new ids (never reused).

        Args:
            items: image paths, folders, list files or IDX folders (embedded with the index's
                backbone, named relative to their folder); or PIL images / uint8 arrays; or
                float embeddings ``(n, D)`` of the index's backbone.
            names: one per item for images given as arrays and for embeddings (default "").
            labels: one class name (or a list of them) per item, classes of the index.
            metadata: field -> one value per item, or one dict per item.
            uploads: per item, ``(bytes, suffix)`` of its encoded image to keep in the folder.
            progress: show a progress bar while embedding image files.
            batch_size: images embedded at a time.

        Raises:
            InputError: no items, unknown labels, names or metadata of the wrong length.
        """
        from hashindex.live.ingest import add_images

        if isinstance(items, (str, os.PathLike)) or (
            isinstance(items, (list, tuple)) and items and all(isinstance(v, (str, os.PathLike)) for v in items)
        ):
            specs = [str(items)] if isinstance(items, (str, os.PathLike)) else [str(v) for v in items]
            meta = None if metadata is None else metadata_source(metadata)
            ids, failures = add_images(
                self._live, specs, self.embedder, batch_size=batch_size, progress=progress, meta=meta
            )
            self.last_failures = failures
            return ids
        batches, count = classify(items, self.embedder.draft_size if _has_images(items) else None)
        if len(batches) != 1 or batches[0].kind == "ids":
            raise InputError("add takes image paths, images, or float embeddings (all of one kind)")
        b = batches[0]
        x = self.embedder(b.values) if b.kind == "images" else np.stack(b.values)
        names = [""] * count if names is None else [str(n) for n in names]
        if len(names) != count:
            raise InputError(f"{len(names)} names for {count} items")
        lab = None if labels is None else _label_rows(self.snapshot, labels, count)
        meta = None if metadata is None else metadata_source(metadata)(names)
        return self._live.add(x, names, labels=lab, uploads=uploads, meta=meta)

    def add_embeddings_file(self, path, *, verify: bool = True, metadata=None) -> np.ndarray:
        """Add the items of an embeddings file made with the index's backbone (names, labels and
        source as recorded there; ``metadata``: a sidecar file keyed by name)."""
        from hashindex.embedding.metadata import metadata_for, read_sidecar
        from hashindex.live.ingest import add_embeddings_file

        sidecar = read_sidecar(metadata) if metadata else None
        meta = None if sidecar is None else (lambda names: metadata_for(names, sidecar))
        return add_embeddings_file(self._live, path, verify=verify, meta=meta)

    def remove(self, ids) -> np.ndarray:
        """Remove items by id as one durable commit (InputError for an id not in the index)."""
        return self._live.remove(ids)

    def ids_of(self, names) -> np.ndarray:
        """The ids of the items with these names (InputError for a name not found)."""
        return self._live.ids_of_names(names)

    def compact(self) -> None:
        """Fold the commits into a new base: removed items leave the folder, ids stay."""
        self._live.compact()

    # -- making one ----------------------------------------------------------------------------

    @classmethod
    def from_embeddings(cls, x, path, **options) -> Index:
        """Fit a probe on float embeddings and build an index from them in one call: ``PATH/``
        gets ``embeddings.h5``, ``probe/`` and ``index/`` (the layout of ``hashindex index``;
        options: :func:`hashindex.api.pipeline.write_arrays_project`). The index holds the same
        codes and ids as ``fit-probe`` and ``build`` make from the same embeddings file."""
        return open_index(write_arrays_project(x, path, **options))


def _has_images(queries) -> bool:
    """Whether the queries include images (so the backbone's preprocessing is needed)."""
    if isinstance(queries, (str, os.PathLike)):
        return True
    if isinstance(queries, np.ndarray):
        return queries.dtype == np.uint8
    if isinstance(queries, (list, tuple)):
        return any(_has_images(q) for q in queries)
    return type(queries).__module__.startswith("PIL.")


def _hits(snap, query: str, d, rows, scores) -> Hits:
    return Hits(
        query,
        snap.ids[rows],
        np.asarray(d, np.int32),
        snap.name_list(rows),
        [snap.label_text(int(p)) for p in rows],
        None if scores is None else np.asarray(scores),
    )


def _label_rows(snap, labels, count: int) -> np.ndarray | None:
    """Multi-hot rows of the index's classes for one label (or list of labels) per item."""
    if snap.labels is None:
        raise InputError("the index has no labels: add items without labels")
    if len(labels) != count:
        raise InputError(f"{len(labels)} labels for {count} items")
    names = list(snap.label_names or [str(c) for c in range(snap.labels.shape[1])])
    out = np.zeros((count, len(names)), np.uint8)
    for i, lab in enumerate(labels):
        for one in [lab] if isinstance(lab, str) else lab:
            if str(one) not in names:
                raise InputError(f"unknown label {one!r}: the index's classes are {', '.join(names[:12])}")
            out[i, names.index(str(one))] = 1
    return out


def open_index(path: str | os.PathLike, *, verify: bool = True, images_root=None, **backbone) -> Index:
    """Open an index folder (or a folder made by ``hashindex index``): verify its files, replay
    its commits.

    Args:
        path: the folder.
        verify: check the sha256 of every file (sizes and the manifest's own checksum are
            checked either way).
        images_root: where the images of the build's source are now, when they moved.
        backbone: ``weights``, ``adapter``, ``device``, ``runtime`` for image queries
            (:class:`Index`).

    Raises:
        InputError: not an index folder, or a newer format.
        IntegrityError: a missing, truncated or modified file.
    """
    return Index(open_live(index_folder(path), verify=verify, images_root=images_root), **backbone)


def build_index(embeddings, probe, out, config=None, *, verify: bool = True, metadata=None, **options) -> Index:
    """Encode embeddings with a probe and write an index folder; returns it opened.
    ``kind="auto"`` (the default) chooses the kind by measuring the collection. Arguments:
    :func:`hashindex.api.pipeline.write_index_folder`."""
    return open_index(write_index_folder(embeddings, probe, out, config, verify=verify, metadata=metadata, **options))


def index_images(source, out, **options) -> Index:
    """A folder of images to an open index in one call: embed, fit the probe, build, every stage's
    artifact kept in ``out`` so a re-run resumes (:func:`hashindex.api.project.run_index` documents
    the options)."""
    from hashindex.api.project import run_index

    return open_index(run_index(source, out, **options))
