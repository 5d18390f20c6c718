"""Feature-space views: CroVCA's two views of a sample when no image views were cached.

Imported embeddings come without augmented image views, so CroVCA makes its views in feature
space instead: each view of an embedding ``x`` is ``(x * mask) / (1 - p) + σ · s ⊙ ε``, with
``mask`` an inverted dropout mask of rate ``p`` (``dropout``), ``ε`` standard Gaussian noise
and ``s`` the per-dimension standard deviation of the training embeddings (so ``noise`` is a
fraction of each dimension's spread, whatever the model's scale). Fresh noise is drawn at every
step from a seeded generator on the fitting device, so a fit is reproducible. How these views compare with ITQ and
with image views on Fashion-MNIST is in BENCHMARKS.md ("Feature-space views").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureViewConfig:
    """Strength of the feature-space augmentation (see the module docstring)."""

    dropout: float = 0.2
    noise: float = 0.3


def repeated_views(x: np.ndarray, v: int = 2) -> np.ndarray:
    """``(n, v, D)`` view array whose every view is ``x`` itself (no copy: a zero stride)."""
    n, d = x.shape
    x = np.ascontiguousarray(x)
    return np.lib.stride_tricks.as_strided(x, shape=(n, v, d), strides=(x.strides[0], 0, x.strides[1]))


def feature_view_fn(
    x: np.ndarray, seed: int, config: FeatureViewConfig = FeatureViewConfig()
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that turns a batch of embeddings into a random feature-space view of it.

    Args:
        x: the training embeddings (for the per-dimension scale of the noise).
        seed: seeds the generator of masks and noise.
        config: dropout rate and noise scale.
    """
    scale = torch.from_numpy(x.std(axis=0).astype(np.float32)) * config.noise
    keep = 1.0 - config.dropout
    state: dict[torch.device, tuple[torch.Generator, torch.Tensor]] = {}

    def view(batch: torch.Tensor) -> torch.Tensor:
        dev = batch.device
        if dev not in state:  # drawn where the batch is (a CPU fit reproduces the former stream)
            state[dev] = (
                torch.Generator(dev).manual_seed(int(seed) + 7919),
                scale.to(dev),
            )  # apart from the batch sampler's
        gen, s = state[dev]
        b = batch.float()
        mask = (torch.rand(b.shape, generator=gen, device=dev) < keep).to(b.dtype) / keep
        return b * mask + torch.randn(b.shape, generator=gen, device=dev) * s

    return view
