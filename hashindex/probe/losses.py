"""CroVCA losses: cross-view BCE alignment (unsupervised or supervised) and the coding rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment_loss(z1: torch.Tensor, z2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """``½·[BCE(z1, t1) + BCE(z2, t2)]`` with logits ``z`` and stop-gradient 0/1 targets ``t``
    (the two views have the same shape: one BCE over both, half the small ops of a step)."""
    return F.binary_cross_entropy_with_logits(torch.cat((z1, z2)).float(), torch.cat((t1, t2)).detach().float())


def cross_view_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Unsupervised alignment: each view's logits fit the other view's binarised code."""
    return alignment_loss(z1, z2, (z2 > 0).float(), (z1 > 0).float())


def supervised_targets(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class-prototype targets: ``1[mean over the sample's labels of P_c > 0]``.

    ``P_c`` is the mean logit vector (both views) of the batch samples that carry label c.

    Args:
        z1, z2: ``(m, B)`` logits of the two views.
        labels: ``(m, C)`` 0/1 multi-hot labels; every row must have at least one label.

    Returns:
        ``(m, B)`` float 0/1 targets, detached.
    """
    y = labels.float()
    z = 0.5 * (z1.detach().float() + z2.detach().float())  # per-sample mean over the views
    counts = y.sum(0)  # samples per class in the batch
    protos = (y.t() @ z) / counts.clamp_min(1)[:, None]  # (C, B)
    t = (y @ protos) / y.sum(1, keepdim=True).clamp_min(1)
    return (t > 0).float()


def codebook_targets(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Codebook targets: the sign of the mean of the ±1 codes of the sample's labels.

    A single-label sample's target is its class code. Where the codes of a multi-label sample's
    classes disagree evenly on a bit, that bit falls back to the prototype target
    (:func:`supervised_targets`).

    Args:
        z1, z2: ``(m, B)`` logits of the two views.
        labels: ``(m, C)`` 0/1 multi-hot labels.
        codes: ``(C, B)`` 0/1 class codes.

    Returns:
        ``(m, B)`` float 0/1 targets, detached.
    """
    y = labels.float()
    vote = y @ (2 * codes.float() - 1)
    return torch.where(vote == 0, supervised_targets(z1, z2, labels), (vote > 0).float())


def supervised_loss(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, codes: torch.Tensor | None = None
) -> torch.Tensor:
    """Supervised alignment; samples without any label fall back to the cross-view target.

    ``codes``: class codes (codebook targets); None gives the paper's prototype targets.
    """
    t = supervised_targets(z1, z2, labels) if codes is None else codebook_targets(z1, z2, labels, codes)
    has = labels.sum(1) > 0  # no branch on it: that would wait for the device every step
    t1 = torch.where(has[:, None], t, (z2 > 0).float())
    t2 = torch.where(has[:, None], t, (z1 > 0).float())
    return alignment_loss(z1, z2, t1, t2)


def coding_rate(z: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    """Negative coding rate of the row-normalised logits (minimising it spreads the codes).

    ``R(Z) = −½·logdet(I_B + B/(m·ε)·ẐᵀẐ)·(B+m)/(B·m)``, the logdet by Cholesky. ``z`` is one
    ``(m, B)`` matrix, or a stack ``(k, m, B)`` of them (one rate each, factorised together).
    """
    m, b = z.shape[-2:]
    zn = F.normalize(z.float(), dim=-1)
    a = torch.eye(b, device=z.device, dtype=torch.float32) + (b / (m * eps)) * (zn.mT @ zn)
    # cholesky_ex: A is positive definite by construction, and checking the factorisation's
    # status would make the host wait for the device every step.
    logdet = 2.0 * torch.log(torch.diagonal(torch.linalg.cholesky_ex(a).L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * logdet * (b + m) / (b * m)


def crovca_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    labels: torch.Tensor | None,
    eps: float,
    reg: float,
    codes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CroVCA objective of a batch's two views: ``(alignment + reg · rate, alignment, rate)``.

    Supervised when ``labels`` are given (codebook targets with ``codes``, else the paper's
    class-prototype targets), cross-view otherwise; the rate is the coding rate averaged over
    the two views.
    """
    align = supervised_loss(z1, z2, labels, codes) if labels is not None else cross_view_loss(z1, z2)
    rate = coding_rate(torch.stack((z1, z2)), eps).mean()
    return align + reg * rate, align, rate
