"""Additions to a live index from images (embedded with the index's backbone) or from stored
embeddings of the same backbone. The probe is not refitted: new items get its codes.

Items are named as built ones are: relative to the folder they come from, which the commit
records as the item's root (single image files: their folder; IDX items: ``split/index``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.spec import check_same_backbone
from hashindex.embedding.decode import IMAGE_EXTENSIONS, DecodeError, decode_image
from hashindex.embedding.sources import ImageSource, open_source
from hashindex.live.live_index import LiveIndex
from hashindex.store.reader import open_embeddings

logger = logging.getLogger(__name__)


def _label_rows(live: LiveIndex, labels: np.ndarray | None, label_names) -> np.ndarray | None:
    """Labels kept when they use the index's classes (same count and names), else None (with a
    warning: the new items are then unlabelled, which evaluate counts as never relevant)."""
    snap = live.snapshot
    ours = snap.label_names
    if labels is None or snap.labels is None:
        return None
    if labels.shape[1] != snap.labels.shape[1] or (ours and label_names and list(ours) != list(label_names)):
        logger.warning(
            "the new items' labels are other classes than the index's (or in another order): added without labels"
        )
        return None
    return labels


@dataclass(frozen=True)
class Pending:
    """An image to add: its name (relative to ``root``), root folder (None: not a file), index
    in its source, and how to read it."""

    name: str
    root: str | None
    source_index: int
    source: ImageSource | None
    path: str


def collect_images(specs: list[str]) -> list[Pending]:
    """The images of SOURCE arguments: single image files, folders, list files, IDX folders or
    ``fashion-mnist``.

    Raises:
        InputError: a source that does not exist or holds no images.
    """
    out = []
    for spec in specs:
        p = Path(spec)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(Pending(p.name, str(p.resolve().parent), -1, None, str(p)))
            continue
        src = open_source(spec)
        in_memory = src.kind in ("idx", "fashion-mnist")  # decoded from the IDX arrays, not files
        root = None if in_memory else os.path.abspath(src.location)
        for i, name in enumerate(src.names):
            out.append(Pending(name, root, i, src, "" if in_memory else os.path.join(src.location, name)))
    if not out:
        raise InputError("no images found in the given sources")
    return out


def add_images(live: LiveIndex, specs: list[str], embed, *, batch_size: int = 64, progress: bool = True, meta=None):
    """Embed the images of SOURCE arguments with ``embed`` (features of decoded images, the
    index's backbone) and add them as one commit.

    Args:
        live: the index.
        specs: image files, folders, list files, IDX folders or ``fashion-mnist``.
        embed: ``list[np.ndarray] -> (n, D)`` features (:class:`~hashindex.backbone.features.ImageEmbedder`).
        batch_size: images decoded and embedded at a time.
        progress: show a progress bar.
        meta: a function of the item names giving their metadata (field -> values), or None.

    Returns:
        ``(ids, failures)``: the new ids and the number of images that could not be decoded.

    Raises:
        InputError: no images, or none could be decoded.
    """
    from tqdm.auto import tqdm

    items = collect_images(specs)
    draft = getattr(embed, "draft_size", None)
    xs, kept, labels, failures, label_names = [], [], [], 0, None
    for s in tqdm(range(0, len(items), batch_size), desc="add", unit="batch", disable=not progress):
        images = []
        for it in items[s : s + batch_size]:
            try:
                images.append(
                    it.source.load(it.source_index, draft) if it.source is not None else decode_image(it.path, draft)
                )
            except DecodeError as e:
                logger.warning("skipping %s", e)
                failures += 1
                continue
            kept.append(it)
            labels.append(None if it.source is None or it.source.labels is None else it.source.labels[it.source_index])
            label_names = label_names or (it.source.label_names if it.source is not None else None)
        if images:
            xs.append(embed(images))
    if not xs:
        raise InputError(f"none of the {len(items)} images could be decoded")
    lab = None
    if all(v is not None for v in labels) and len({len(v) for v in labels}) == 1:
        lab = _label_rows(live, np.stack(labels), label_names)
    roots = sorted({it.root for it in kept if it.root is not None})
    root_id = [roots.index(it.root) if it.root is not None else -1 for it in kept]
    names = [it.name for it in kept]
    ids = live.add(
        np.concatenate(xs),
        names,
        labels=lab,
        source_index=np.array([it.source_index for it in kept]),
        roots=roots,
        root_id=root_id,
        meta=meta(names) if meta else None,
    )
    return ids, failures


def add_embeddings_file(live: LiveIndex, path: str | os.PathLike, *, verify: bool = True, meta=None) -> np.ndarray:
    """Add the items of an embeddings file made with the index's backbone (verified first unless
    ``verify`` is False); names are the file's, relative to its source's folder when it has one.

    Raises:
        IntegrityError: the file was modified after it was written.
        MismatchError: another backbone or preprocessing, or another width.
    """
    emb = open_embeddings(path, verify=verify)
    check_same_backbone(live.manifest.backbone, emb.backbone, f"the index {live.path}", f"the embeddings {path}")
    lab = _label_rows(live, emb.labels(), emb.label_names)
    names = emb.names()
    source = emb.attrs.get("source") or {}
    root = (
        os.path.abspath(source["location"])
        if isinstance(source, dict) and source.get("kind") in ("folder", "list", "files")
        else None
    )
    kw = {"roots": [root], "root_id": np.zeros(len(names), np.int32)} if root else {}
    return live.add(
        emb.embeddings(), names, labels=lab, source_index=emb.source_index(), meta=meta(names) if meta else None, **kw
    )
