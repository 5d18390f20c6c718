"""The query stage: images or stored embeddings → ranked items of an index.

A query by stored embeddings loads no model (and does not import torch until the probe encodes).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .importer import check_image_queries
from .index import HashIndex, load_index
from .retrieval import ranked
from .sources import DecodeError, decode_image
from .store import open_embeddings
from .validate import check_k


def _label_text(labels: np.ndarray | None, names: list[str] | None, row: int) -> str | None:
    if labels is None:
        return None
    on = np.flatnonzero(labels[row])
    return ",".join(names[j] if names else str(j) for j in on)


def format_results(index: HashIndex, query_names: list[str], d: np.ndarray, ids: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    """Attach names and labels to search results: one dict per query with its ranked hits.

    Each hit has rank, id, name, label, Hamming distance and, after re-ranking, its score
    (cosine similarity, or asymmetric distance).
    """
    items = index.items()
    out = []
    for q, name in enumerate(query_names):
        hits = [
            {
                "rank": r + 1,
                "id": int(i),
                "name": items["names"][i],
                "label": _label_text(items["labels"], items["label_names"], i),
                "distance": int(dist),
                **({} if scores is None else {"score": round(float(scores[q, r]), 6)}),
            }
            for r, (dist, i) in enumerate(zip(d[q], ids[q]))
        ]
        out.append({"query": name, "results": hits})
    return out


def query_images(index_dir, images: list[str], k: int, *, nprobe=None, weights=None, device=None, rerank=None, asymmetric=False, adapter=None) -> list[dict]:
    """Embed image files with the index's backbone (with its LoRA adapter, if any) and search.

    Raises:
        InputError: an image cannot be decoded, bad k.
        MismatchError: the backbone weights found differ from those recorded.
    """
    check_k(k)
    index = load_index(index_dir)
    check_image_queries(index.manifest.backbone, f"the index {index_dir}")
    index.set_nprobe(nprobe)
    decoded = []
    for path in images:
        try:
            decoded.append(decode_image(path))
        except DecodeError as e:
            raise InputError(f"cannot read query image {e}") from None
    from .backbone import backbone_from_spec  # torch: only for queries by image
    from .embed import embed_images

    bb = backbone_from_spec(index.manifest.backbone, weights=weights, device=device or "auto", adapter=adapter)
    d, ids, s = ranked(index, embed_images(bb, decoded), k, rerank, asymmetric)
    return format_results(index, list(images), d, ids, s)


def query_embeddings_file(index_dir, emb_file, k: int, *, limit=None, nprobe=None, rerank=None, asymmetric=False) -> list[dict]:
    """Search with the eval embeddings of an HDF5 file (queries named by their item names)."""
    check_k(k)
    index = load_index(index_dir)
    index.set_nprobe(nprobe)
    q = open_embeddings(emb_file)
    index.check_queries(q)
    rows = slice(0, min(limit or q.n, q.n))
    d, ids, s = ranked(index, q.embeddings(rows), k, rerank, asymmetric)
    return format_results(index, q.names()[rows], d, ids, s)
