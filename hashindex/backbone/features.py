"""Eval-view features of decoded images by the backbone a spec records: the one path from a
recorded backbone to features, for queries, additions and the service.

On the CPU the backbone's cached ONNX export answers (:mod:`hashindex.backbone.onnx_runtime`), so
a process that only searches by image never imports torch; otherwise (a GPU, ``runtime="torch"``,
or no export yet) torch runs it, and on the CPU the export is made then for the next time.
"""

from __future__ import annotations

import threading

import numpy as np

from hashindex.backbone.preprocess import base_size, eval_view_np, to_base
from hashindex.core.errors import InputError
from hashindex.core.spec import BackboneSpec, check_image_queries


def embed_images(backbone, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Eval-view features of decoded RGB images by a loaded torch backbone (or its ONNX export)."""
    import torch

    from hashindex.backbone.augment import eval_view

    s0 = base_size(backbone.spec)
    out = []
    for s in range(0, len(images), batch_size):
        base = np.stack([to_base(im, s0, backbone.spec.interpolation) for im in images[s : s + batch_size]])
        x = torch.from_numpy(base).permute(0, 3, 1, 2).to(backbone.device)
        out.append(backbone.features(eval_view(x, backbone.spec)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


class ImageEmbedder:
    """Features of decoded RGB ``(H, W, 3)`` uint8 images by a recorded backbone, loaded on first
    use (once, even when several threads ask at the same time) and kept.

    Args:
        spec: the backbone spec an artifact recorded.
        weights: a local copy of the weights when the recorded path is gone.
        adapter: a local copy of the recorded LoRA adapter when its folder moved.
        device: ``auto``, ``cpu`` or ``cuda``.
        runtime: ``auto`` (ONNX Runtime on the CPU when it is installed), ``onnx`` or ``torch``.
        batch_size: images per forward pass.

    Raises:
        InputError: the spec is of imported embeddings (no model hashindex can run).
    """

    def __init__(self, spec, *, weights=None, adapter=None, device="auto", runtime="auto", batch_size: int = 64):
        self.spec = spec if isinstance(spec, BackboneSpec) else BackboneSpec.from_dict(spec)
        check_image_queries(self.spec, "the index")
        self.weights, self.adapter, self.device, self.runtime = weights, adapter, device or "auto", runtime or "auto"
        self.batch_size = batch_size
        self._model, self._lock = None, threading.Lock()

    @property
    def draft_size(self) -> int:
        """The side of the square base image: JPEGs may be decoded at any scale that covers it."""
        return base_size(self.spec)

    def _load(self):
        from hashindex.backbone import onnx_runtime

        with self._lock:
            if self._model is not None:
                return self._model
            if self.runtime != "torch" and self.device in ("auto", "cpu"):
                ob = onnx_runtime.load_onnx(self.spec)
                if ob is not None:
                    self._model = ob
                    return ob
            from hashindex.backbone.model import backbone_from_spec  # torch: only when no export answers

            bb = backbone_from_spec(self.spec, weights=self.weights, device=self.device, adapter=self.adapter)
            self._model = onnx_runtime.with_runtime(bb, self.runtime)
            return self._model

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """``(len(images), D)`` float32 features.

        Raises:
            InputError: no images, or the backbone cannot be loaded.
        """
        if not len(images):
            raise InputError("no images to embed")
        model = self._load()
        if hasattr(model, "features_np"):  # the ONNX export: NumPy in, NumPy out, no torch
            s0 = self.draft_size
            out = []
            for s in range(0, len(images), self.batch_size):
                base = np.stack([to_base(im, s0, self.spec.interpolation) for im in images[s : s + self.batch_size]])
                out.append(model.features_np(eval_view_np(base, self.spec)))
            return np.concatenate(out)
        return embed_images(model, images, self.batch_size)
