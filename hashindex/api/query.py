"""The query stage: images or stored embeddings → ranked items of an index.

A query by stored embeddings loads no model (and does not import torch until the probe encodes).
"""

from __future__ import annotations

import numpy as np

from hashindex.backbone.preprocess import base_size, eval_view_np, to_base
from hashindex.core.errors import InputError
from hashindex.core.spec import BackboneSpec
from hashindex.core.validate import check_k
from hashindex.embedding.sources import DecodeError, decode_image
from hashindex.store.reader import open_embeddings


def format_live(
    snap, query_names: list[str], d: np.ndarray, ids: np.ndarray, scores: np.ndarray | None = None
) -> list[dict]:
    """Attach rank, name and label to search results: one dict per query with its ranked hits
    (rank, id, name, label, Hamming distance and, after re-ranking, the score: cosine similarity,
    or asymmetric distance)."""
    return [
        {"query": name, "results": [dict(rank=r + 1, **hit) for r, hit in enumerate(hits)]}
        for name, hits in zip(query_names, snap.results(d, ids, scores))
    ]


def query_images(
    index_dir,
    images: list[str],
    k: int,
    *,
    nprobe=None,
    weights=None,
    device=None,
    rerank=None,
    asymmetric=False,
    adapter=None,
    runtime: str = "auto",
    verify: bool = True,
) -> list[dict]:
    """Embed image files with the index's backbone (with its LoRA adapter, if any) and search;
    ``device`` (default ``auto``) runs both the backbone and a flat index's Hamming scan.

    With ``runtime`` ``auto`` or ``onnx`` on the CPU the backbone's cached ONNX export answers
    (:mod:`hashindex.backbone.onnx_runtime`; exported on first use), so the process never imports torch.
    ``verify`` False skips the sha256 of the index files (their sizes are still checked).

    Raises:
        InputError: an image cannot be decoded, bad k.
        MismatchError: the backbone weights found differ from those recorded.
    """
    from hashindex.live.live_index import open_live

    check_k(k)
    from hashindex.embedding.importer import check_image_queries

    live = open_live(index_dir, verify=verify)
    check_image_queries(live.manifest.backbone, f"the index {index_dir}")
    spec = BackboneSpec.from_dict(live.manifest.backbone)
    snap = live.snapshot
    snap.index.set_nprobe(nprobe)
    decoded = []
    for path in images:
        try:
            decoded.append(decode_image(path, base_size(spec)))
        except DecodeError as e:
            raise InputError(f"cannot read query image {e}") from None
    feats = image_features(spec, decoded, weights=weights, device=device, adapter=adapter, runtime=runtime)
    d, ids, s = snap.search(feats, k, rerank, asymmetric, device or "auto")
    return format_live(snap, list(images), d, ids, s)


def image_features(
    spec: BackboneSpec,
    images: list[np.ndarray],
    *,
    weights=None,
    device=None,
    adapter=None,
    runtime="auto",
    batch_size: int = 64,
) -> np.ndarray:
    """Eval-view features of decoded RGB images by the backbone of ``spec``: from its cached ONNX
    export when ``runtime`` allows and the device is the CPU (no torch), else from torch (and then
    the export is made for the next call)."""
    from hashindex.backbone import onnx_runtime as onnx_backbone

    if runtime != "torch" and device in (None, "auto", "cpu"):
        ob = onnx_backbone.load_onnx(spec)
        if ob is not None:
            s0 = base_size(spec)
            out = [
                ob.features_np(
                    eval_view_np(
                        np.stack([to_base(im, s0, spec.interpolation) for im in images[s : s + batch_size]]), spec
                    )
                )
                for s in range(0, len(images), batch_size)
            ]
            return np.concatenate(out)
    from hashindex.backbone.model import backbone_from_spec  # torch: only when no ONNX export answers
    from hashindex.embedding.run import embed_images

    bb = backbone_from_spec(spec, weights=weights, device=device or "auto", adapter=adapter)
    return embed_images(onnx_backbone.with_runtime(bb, runtime), images, batch_size)


def query_embeddings_file(
    index_dir,
    emb_file,
    k: int,
    *,
    limit=None,
    nprobe=None,
    rerank=None,
    asymmetric=False,
    device=None,
    verify: bool = True,
) -> list[dict]:
    """Search with the eval embeddings of an HDF5 file (queries named by their item names); a flat
    index's Hamming scan on ``device`` (default ``auto``: the GPU when CUDA is there)."""
    from hashindex.live.live_index import open_live

    check_k(k)
    snap = open_live(index_dir, verify=verify).snapshot
    snap.index.set_nprobe(nprobe)
    q = open_embeddings(emb_file)
    snap.index.check_queries(q)
    rows = slice(0, min(limit or q.n, q.n))
    d, ids, s = snap.search(q.embeddings(rows), k, rerank, asymmetric, device or "auto")
    return format_live(snap, q.names(rows), d, ids, s)
