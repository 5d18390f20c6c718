"""Eval view equals timm's eval transform; augmented views are deterministic per image."""

import numpy as np
import pytest
import torch
from PIL import Image

from hashindex.backbone.augment import augmented_view, eval_view, sample_params
from hashindex.backbone.preprocess import base_size, to_base
from hashindex.core.config import AugmentConfig
from hashindex.core.spec import BackboneSpec

SPEC = BackboneSpec("m", "w", None, 112, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3, 8)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_eval_view_matches_timm_eval_transform(rng, interpolation):
    from timm.data import create_transform

    img = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    tf = create_transform(
        input_size=(3, 112, 112), interpolation=interpolation, mean=SPEC.mean, std=SPEC.std, crop_pct=0.875
    )
    want = tf(Image.fromarray(img))
    base = torch.from_numpy(to_base(img, base_size(SPEC), interpolation)).permute(2, 0, 1)[None]
    got = eval_view(base, SPEC)[0]
    # timm normalises floats after resizing; we keep the uint8 base: at most one grey level apart.
    assert (got - want).abs().max().item() <= 2 / 255 / 0.5 + 1e-6


def test_views_are_deterministic_per_image_not_per_batch(rng):
    imgs = torch.from_numpy((rng.random((6, 3, 128, 128)) * 255).astype(np.uint8))
    cfg = AugmentConfig()
    full = augmented_view(imgs, SPEC, sample_params(range(6), 1, 7, 128, cfg))
    part = augmented_view(imgs[3:], SPEC, sample_params(range(3, 6), 1, 7, 128, cfg))
    torch.testing.assert_close(full[3:], part, atol=1e-5, rtol=0)
    other_view = augmented_view(imgs, SPEC, sample_params(range(6), 2, 7, 128, cfg))
    assert full.shape == (6, 3, 112, 112)
    assert not torch.allclose(full, other_view)


def test_view_params_follow_the_recipe():
    cfg = AugmentConfig()
    p = sample_params(range(4000), 0, 0, 128, cfg)
    w = p.boxes[:, 2] - p.boxes[:, 0]
    h = p.boxes[:, 3] - p.boxes[:, 1]
    area = (w * h) / 128**2
    assert area.min() >= 0.38 and area.max() <= 1.0
    for rate, want in [(p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.1), (p.solarize, 0.1)]:
        assert rate.float().mean().item() == pytest.approx(want, abs=0.03)
    assert p.factors[:, :3].min() >= 0.6 and p.factors[:, :3].max() <= 1.4
    assert p.factors[:, 3].abs().max() <= 0.2


def test_identity_view_reproduces_the_crop():
    # no flip/jitter/gray/blur/solarize and the full box: the view is the resized base image
    img = torch.full((1, 3, 128, 128), 100, dtype=torch.uint8)
    p = sample_params([0], 0, 0, 128, AugmentConfig(flip_p=0, jitter_p=0, gray_p=0, blur_p=0, solarize_p=0))
    p.boxes[:] = torch.tensor([0.0, 0.0, 128.0, 128.0])
    v = augmented_view(img, SPEC, p)
    torch.testing.assert_close(v, torch.full_like(v, (100 / 255 - 0.5) / 0.5), atol=1e-5, rtol=0)
