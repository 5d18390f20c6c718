"""A frozen timm model with its :class:`~hashindex.core.spec.BackboneSpec`, and the device it runs on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hashindex.core.errors import InputError
from hashindex.core.spec import BackboneSpec


def resolve_device(device: str | None) -> torch.device:
    """``auto`` picks CUDA when available, else CPU.

    Raises:
        InputError: ``cuda`` was asked for and no GPU is visible, or the name is unknown.
    """
    device = device or "auto"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was given but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda") from None


@dataclass
class Backbone:
    """A frozen timm model with its :class:`BackboneSpec`."""

    model: torch.nn.Module
    spec: BackboneSpec
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features of a normalised batch, float32 ``(n, num_features)``."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return f.float()

    @torch.inference_mode()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a normalised batch (for checking the weights)."""
        return self.model(x.contiguous(memory_format=torch.channels_last)).float()
