"""A tiny randomly initialised timm ViT registered under a timm model name, for fast CPU tests."""

from __future__ import annotations

import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

NAME = "hashindex_test_vit"

if not timm.is_model(NAME):

    @register_model
    def hashindex_test_vit(pretrained=False, **kwargs):
        return VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10
        )


def write_weights(path) -> str:
    """Seeded random weights of the tiny ViT as a safetensors file; returns its path."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(NAME)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)
