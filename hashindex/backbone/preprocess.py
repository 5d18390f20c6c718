"""The eval preprocessing without torch: decoded image → square base image → normalised crop.

Each image is decoded once into a square *base* image: the centred square of its shorter side,
resized to ``floor(image_size / crop_pct)`` (uint8). The eval view is the base's centre
``image_size`` crop, scaled to [0, 1] and normalised (exactly timm's eval transform: resize the
shorter side, centre crop). :mod:`hashindex.backbone.augment` draws the augmented views from the same base
on the compute device; this module serves the paths that must not import torch (a query answered
by the ONNX backbone).
"""

from __future__ import annotations

import math

import numpy as np

from hashindex.core.spec import BackboneSpec


def base_size(spec: BackboneSpec) -> int:
    """Side of the square base image for a backbone spec."""
    return int(math.floor(spec.image_size / spec.crop_pct))


def to_base(rgb: np.ndarray, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Centre-square-crop an ``(H, W, 3)`` uint8 image and resize it to ``(size, size, 3)``."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    sq = rgb[top : top + s, left : left + s]
    if s == size:
        return np.ascontiguousarray(sq)
    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(interpolation, Image.BICUBIC)
    return np.array(Image.fromarray(sq).resize((size, size), resample=resample), dtype=np.uint8)


def eval_view_np(base: np.ndarray, spec: BackboneSpec) -> np.ndarray:
    """Centre crop of a uint8 base batch ``(n, S0, S0, 3)`` → normalised float32 ``(n, 3, S, S)``
    (the same arithmetic as :func:`hashindex.backbone.augment.eval_view`)."""
    s0, s = base.shape[1], spec.image_size
    off = (s0 - s) // 2
    x = base[:, off : off + s, off : off + s].astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
