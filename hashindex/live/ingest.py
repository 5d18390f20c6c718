"""Additions to a live index from images (embedded with the index's backbone) or from stored
embeddings of the same backbone. The probe is not refitted: new items get its codes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.core.spec import check_same_backbone
from hashindex.embedding.sources import IMAGE_EXTENSIONS, DecodeError, ImageSource, decode_image, open_source
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


def collect_images(specs: list[str]) -> list[tuple[str, int, ImageSource | None, str]]:
    """``(name, source_index, source, path)`` of each image of SOURCE arguments: single image
    files, folders, list files, IDX folders or ``fashion-mnist`` (names are absolute paths for
    files, ``split/index`` for IDX items)."""
    out = []
    for spec in specs:
        p = Path(spec)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append((str(p.resolve()), -1, None, str(p)))
            continue
        src = open_source(spec)
        in_memory = src.kind in ("idx", "fashion-mnist")  # decoded from the IDX arrays, not files
        for i, name in enumerate(src.names):
            path = "" if in_memory else os.path.join(src.location, name)
            out.append((name if in_memory else str(Path(path).resolve()), i, src, path))
    if not out:
        raise InputError("no images found in the given sources")
    return out


def add_images(
    live: LiveIndex, specs: list[str], *, weights=None, device=None, batch_size: int = 64, progress: bool = True
) -> tuple[np.ndarray, int]:
    """Embed the images of SOURCE arguments with the index's backbone and add them as one commit.

    Returns:
        ``(ids, failures)``: the new ids and the number of images that could not be decoded.

    Raises:
        InputError: no images, or none could be decoded.
        MismatchError: the backbone's weights differ from those recorded in the index.
    """
    from tqdm import tqdm

    from hashindex.backbone.model import backbone_from_spec
    from hashindex.embedding.run import embed_images

    items = collect_images(specs)
    bb = backbone_from_spec(live.manifest.backbone, weights=weights, device=device or "auto")
    xs, names, src_idx, labels, failures = [], [], [], [], 0
    label_names = None
    for s in tqdm(range(0, len(items), batch_size), desc="add", unit="batch", disable=not progress):
        images = []
        for name, i, src, path in items[s : s + batch_size]:
            try:
                images.append(src.load(i) if src is not None else decode_image(path))
            except DecodeError as e:
                logger.warning("skipping %s", e)
                failures += 1
                continue
            names.append(name)
            src_idx.append(i)
            labels.append(None if src is None or src.labels is None else src.labels[i])
            label_names = label_names or (src.label_names if src is not None else None)
        if images:
            xs.append(embed_images(bb, images))
    if not xs:
        raise InputError(f"none of the {len(items)} images could be decoded")
    lab = None
    if all(v is not None for v in labels) and len({len(v) for v in labels}) == 1:
        lab = _label_rows(live, np.stack(labels), label_names)
    ids = live.add(np.concatenate(xs), names, labels=lab, source_index=np.array(src_idx))
    return ids, failures


def add_embeddings_file(live: LiveIndex, path: str | os.PathLike) -> np.ndarray:
    """Add the items of an embeddings file made with the index's backbone.

    Raises:
        MismatchError: another backbone or preprocessing, or another width.
    """
    emb = open_embeddings(path)
    check_same_backbone(live.manifest.backbone, emb.backbone, f"the index {live.path}", f"the embeddings {path}")
    lab = _label_rows(live, emb.labels(), emb.label_names)
    return live.add(emb.embeddings(), emb.names(), labels=lab, source_index=emb.source_index())
