"""CroVCA losses against direct formulas."""

import numpy as np
import pytest
import torch

from hashindex.probe.hashcoder import HashCoder
from hashindex.probe.losses import coding_rate, cross_view_loss, supervised_loss, supervised_targets


def _bce(z, t):
    z, t = np.asarray(z, np.float64), np.asarray(t, np.float64)
    p = 1 / (1 + np.exp(-z))
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def test_cross_view_loss_is_symmetric_bce_on_other_views_bits():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    want = 0.5 * (_bce(z1, (z2 > 0).float()) + _bce(z2, (z1 > 0).float()))
    assert cross_view_loss(z1, z2).item() == pytest.approx(want, rel=1e-5)


def test_cross_view_targets_are_stop_gradient():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    cross_view_loss(z1, z2).backward()
    # d/dz1 of ½·BCE(z1, t) is ½(σ(z1) − t)/numel: only z1's own term contributes.
    t = (z2 > 0).float()
    np.testing.assert_allclose(
        z1.grad.numpy(), (0.5 * (torch.sigmoid(z1) - t) / z1.numel()).detach().numpy(), rtol=1e-5, atol=1e-7
    )


def test_supervised_targets_by_hand():
    # 3 samples, 2 classes, 2 bits; sample 2 has both labels.
    z1 = torch.tensor([[1.0, -2.0], [-1.0, 1.0], [0.5, 0.5]])
    z2 = torch.tensor([[3.0, -2.0], [-3.0, 1.0], [0.5, -1.5]])
    y = torch.tensor([[1, 0], [0, 1], [1, 1]])
    # per-sample mean over views: s0 = [2, -2], s1 = [-2, 1], s2 = [0.5, -0.5]
    p0 = (np.array([2, -2]) + np.array([0.5, -0.5])) / 2  # class 0: samples 0, 2 -> [1.25, -1.25]
    p1 = (np.array([-2, 1]) + np.array([0.5, -0.5])) / 2  # class 1: samples 1, 2 -> [-0.75, 0.25]
    want = np.stack([p0 > 0, p1 > 0, (p0 + p1) / 2 > 0]).astype(np.float32)
    np.testing.assert_array_equal(supervised_targets(z1, z2, y).numpy(), want)
    expect = 0.5 * (_bce(z1, want) + _bce(z2, want))
    assert supervised_loss(z1, z2, y).item() == pytest.approx(expect, rel=1e-5)


def test_supervised_unlabelled_rows_fall_back_to_cross_view():
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    y = torch.zeros(4, 3)
    assert supervised_loss(z1, z2, y).item() == pytest.approx(cross_view_loss(z1, z2).item(), rel=1e-6)


@pytest.mark.parametrize("m,b", [(32, 16), (8, 64)])
def test_coding_rate_formula(m, b):
    z = torch.randn(m, b, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 0.05
    zn = (z / z.norm(dim=1, keepdim=True)).numpy()
    _, logdet = np.linalg.slogdet(np.eye(b) + b / (m * eps) * zn.T @ zn)
    want = -0.5 * logdet * (b + m) / (b * m)
    assert coding_rate(z.float(), eps).item() == pytest.approx(want, rel=1e-4)


def test_stacked_coding_rates_are_each_matrix_s_rate():
    z = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(2))
    want = torch.stack([coding_rate(zi) for zi in z])
    np.testing.assert_allclose(coding_rate(z).numpy(), want.numpy(), rtol=1e-5)


def test_coding_rate_prefers_spread_codes():
    collapsed = torch.ones(64, 16) + 0.01 * torch.randn(64, 16)
    spread = torch.randn(64, 16)
    assert coding_rate(spread) < coding_rate(collapsed)


def test_hashcoder_shapes_and_init():
    small = HashCoder(32, 16, "small")
    kinds = [type(m).__name__ for m in small.net]
    assert kinds == ["Linear", "ReLU", "Linear", "BatchNorm1d"]
    assert small.net[0].weight.shape == (32, 32) and small.net[2].weight.shape == (16, 32)
    large = HashCoder(32, 16, "large")
    assert [type(m).__name__ for m in large.net] == ["Linear", "GELU", "Linear", "GELU", "Linear", "BatchNorm1d"]
    assert large.net[0].weight.shape == (2048, 32)  # H = max(2D, 2048)
    w = small.net[0].weight.detach()
    # trunc_normal_(std=0.02) with the usual absolute bounds ±2 (as timm and DINO do)
    assert abs(float(w.std()) - 0.02) < 0.002 and float(w.abs().max()) <= 2.0
    assert float(small.net[0].bias.detach().abs().max()) == 0.0
    assert small(torch.randn(8, 32)).shape == (8, 16)
