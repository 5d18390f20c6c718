"""Preprocessing and the augmented views, batched on the compute device.

Each image is decoded once into a square *base* image: the centred square of its shorter side,
resized to ``floor(image_size / crop_pct)`` (uint8). From the base:

- the eval view is its centre ``image_size`` crop (exactly timm's eval transform: resize the shorter
  side, centre crop);
- an augmented view follows the CroVCA recipe: RandomResizedCrop(scale 0.4–1), horizontal flip,
  ColorJitter(0.4, 0.4, 0.4, 0.2) with p=0.8, grayscale p=0.2, Gaussian blur p=0.1, solarize p=0.1.

Augmentation parameters are drawn per image from a generator seeded by (seed, image index, view),
so views do not depend on batch size, device or where an interrupted run resumed.
Hue is rotated in YIQ space (a linear approximation of the HSV hue shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hashindex.backbone.preprocess import base_size, to_base  # noqa: F401 (the base image is made without torch)
from hashindex.core.config import AugmentConfig
from hashindex.core.spec import BackboneSpec

_GRAY = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def normalize(x: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def eval_view(base: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """Centre crop of a uint8 base batch ``(n, 3, S0, S0)`` → normalised float ``(n, 3, S, S)``."""
    s0, s = base.shape[-1], spec.image_size
    off = (s0 - s) // 2
    x = base[:, :, off : off + s, off : off + s].float() / 255.0
    return normalize(x, spec)


@dataclass
class ViewParams:
    """Per-image augmentation parameters of one batch (tensors of length n, on CPU)."""

    boxes: torch.Tensor  # (n, 4) x1, y1, x2, y2 in base pixels
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor  # (n, 4) brightness, contrast, saturation, hue
    order: torch.Tensor  # (n, 4) permutation of the four jitter ops
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def _crop_box(rng: np.random.Generator, s0: int, cfg: AugmentConfig) -> tuple[float, float, float, float]:
    area = s0 * s0
    lo, hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        ar = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= s0 and 0 < h <= s0:
            y = int(rng.integers(0, s0 - h + 1))
            x = int(rng.integers(0, s0 - w + 1))
            return (x, y, x + w, y + h)
    return (0, 0, s0, s0)


def sample_params(indices, view: int, seed: int, s0: int, cfg: AugmentConfig) -> ViewParams:
    """Draw the parameters of ``view`` for the images ``indices`` (deterministic per image)."""
    rows = []
    for i in indices:
        rng = np.random.default_rng([int(seed), int(i), int(view)])
        box = _crop_box(rng, s0, cfg)
        u = rng.random(6)
        factors = (
            rng.uniform(1 - cfg.brightness, 1 + cfg.brightness),
            rng.uniform(1 - cfg.contrast, 1 + cfg.contrast),
            rng.uniform(1 - cfg.saturation, 1 + cfg.saturation),
            rng.uniform(-cfg.hue, cfg.hue),
        )
        order = rng.permutation(4)
        sigma = rng.uniform(*cfg.blur_sigma)
        rows.append((box, u, factors, order, sigma))
    u = torch.tensor(np.array([r[1] for r in rows]))
    return ViewParams(
        boxes=torch.tensor([r[0] for r in rows], dtype=torch.float32),
        flip=u[:, 0] < cfg.flip_p,
        jitter=u[:, 1] < cfg.jitter_p,
        factors=torch.tensor([r[2] for r in rows], dtype=torch.float32),
        order=torch.tensor(np.array([r[3] for r in rows])),
        gray=u[:, 2] < cfg.gray_p,
        blur=u[:, 3] < cfg.blur_p,
        sigma=torch.tensor([r[4] for r in rows], dtype=torch.float32),
        solarize=u[:, 4] < cfg.solarize_p,
    )


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``f·a + (1−f)·b`` clamped to [0, 1], with a per-image factor ``f``."""
    return (f.view(-1, 1, 1, 1) * a + (1 - f.view(-1, 1, 1, 1)) * b).clamp_(0, 1)


def _jitter_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    if op == 0:  # brightness
        return _blend(x, torch.zeros_like(x), f)
    if op == 1:  # contrast
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)
    if op == 2:  # saturation
        return _blend(x, _gray(x).expand_as(x), f)
    theta = f * 2 * math.pi  # hue: rotate chroma in YIQ
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(len(f), 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = _YIQ2RGB.to(x.device) @ rot @ _RGB2YIQ.to(x.device)
    return torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    k = max(3, int(0.1 * h) | 1)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    ker = torch.exp(-(t[None, :] ** 2) / (2 * sigma.to(x.device)[:, None] ** 2))
    ker = (ker / ker.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def augmented_view(base: torch.Tensor, spec: BackboneSpec, p: ViewParams) -> torch.Tensor:
    """Apply one augmented view to a uint8 base batch; returns normalised float ``(n, 3, S, S)``."""
    from torchvision.ops import roi_align

    dev = base.device
    x = base.float() / 255.0
    n, s = x.shape[0], spec.image_size
    rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], p.boxes], dim=1).to(dev)
    x = roi_align(x, rois, output_size=(s, s), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    x = x.clamp_(0, 1)
    flip = p.flip.to(dev)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    jit = p.jitter.to(dev)
    if jit.any():
        idx = jit.nonzero().squeeze(1)
        y = x[idx]
        fac, order = p.factors[p.jitter].to(dev), p.order[p.jitter]
        # Apply each image's ops in its own random order; group by position to stay batched.
        for pos in range(4):
            ops = order[:, pos]
            for op in range(4):
                sel = (ops == op).nonzero().squeeze(1)
                if len(sel):
                    sel_d = sel.to(dev)
                    y[sel_d] = _jitter_op(y[sel_d], op, fac[sel_d, op])
        x[idx] = y
    g = p.gray.to(dev)
    x = torch.where(g.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    if p.blur.any():
        idx = p.blur.nonzero().squeeze(1).to(dev)
        x[idx] = _gaussian_blur(x[idx], p.sigma[p.blur])
    sol = p.solarize.to(dev).view(-1, 1, 1, 1)
    x = torch.where(sol & (x >= 0.5), 1.0 - x, x)
    return normalize(x, spec)
