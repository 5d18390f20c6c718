"""The HashCoder: a small MLP from frozen embeddings to B logits (code = logits > 0)."""

from __future__ import annotations

import torch
from torch import nn

from hashindex.core.config import HashcoderSize


class HashCoder(nn.Module):
    """MLP probe of CroVCA.

    ``small``: Linear(D, D) → ReLU → Linear(D, B) → BatchNorm1d(B).
    ``large``: Linear(D, H) → GELU → Linear(H, H) → GELU → Linear(H, B) → BatchNorm1d(B),
    H = max(2D, 2048). The final BatchNorm centres every bit, which keeps bits balanced.

    Args:
        in_dim: embedding width D.
        bits: code length B.
        arch: ``small`` or ``large``.
    """

    def __init__(self, in_dim: int, bits: int, arch: HashcoderSize = "small"):
        super().__init__()
        if arch == "small":
            layers: list[nn.Module] = [nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, bits)]
        elif arch == "large":
            h = max(2 * in_dim, 2048)
            layers = [nn.Linear(in_dim, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, bits)]
        else:
            raise ValueError(f"unknown hashcoder {arch!r}: use small or large")
        self.net = nn.Sequential(*layers, nn.BatchNorm1d(bits))
        self.in_dim, self.bits, self.arch = in_dim, bits, arch
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
