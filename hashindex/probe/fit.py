"""The fit-probe stage: CroVCA training on cached views, or a baseline fit, on an embeddings file."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict

import numpy as np
import torch

from ..backbone import resolve_device
from ..codes import bit_balance, pack
from ..errors import InputError
from ..config import FitConfig
from ..store import Embeddings
from .artifact import Probe, state_to_arrays
from .baselines import fit_linear
from .hashcoder import HashCoder
from .losses import coding_rate, cross_view_loss, supervised_loss

logger = logging.getLogger(__name__)

def _cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / max(1, total)))


def _train_crovca(views: np.ndarray, labels: np.ndarray | None, cfg: FitConfig, progress: bool) -> tuple[HashCoder, list[dict]]:
    """Train a HashCoder on ``(n, V, D)`` cached views; two distinct views per sample per step."""
    from tqdm.auto import tqdm

    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    n, v, d = views.shape
    model = HashCoder(d, cfg.bits, cfg.hashcoder).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    data = torch.from_numpy(views)
    if dev.type == "cuda":
        data = data.to(dev)
    lab = None if labels is None else torch.from_numpy(labels.astype(np.float32)).to(dev)
    history, step = [], 0
    bar = tqdm(total=total, unit="step", desc=f"fit crovca {cfg.bits} bits", disable=not progress)
    model.train()
    for epoch in range(cfg.epochs):
        perm = gen.permutation(n)
        sums = np.zeros(3)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm and the coding rate need two samples
                continue
            a = gen.integers(0, v, len(idx))
            b = (a + gen.integers(1, v, len(idx))) % v  # a different view
            ii = torch.from_numpy(idx).to(data.device)
            x1 = data[ii, torch.from_numpy(a).to(data.device)].to(dev, non_blocking=True)
            x2 = data[ii, torch.from_numpy(b).to(data.device)].to(dev, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = _cosine_lr(step, total, cfg.lr, cfg.min_lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                z = model(torch.cat([x1, x2]))
            z1, z2 = z.float().chunk(2)
            align = supervised_loss(z1, z2, lab[ii]) if lab is not None else cross_view_loss(z1, z2)
            reg = 0.5 * (coding_rate(z1, cfg.eps) + coding_rate(z2, cfg.eps))
            loss = align + cfg.reg * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += (loss.item(), align.item(), reg.item())
            step += 1
            bar.update(1)
        m = sums / max(1, steps_per_epoch)
        history.append({"epoch": epoch + 1, "loss": float(m[0]), "align": float(m[1]), "coding_rate": float(m[2])})
        bar.set_postfix(loss=f"{m[0]:.4f}")
        logger.info("epoch %d: loss %.4f (align %.4f, rate %.4f)", epoch + 1, *m)
    bar.close()
    return model.eval().cpu(), history


@torch.no_grad()
def recalibrate_bits(model: HashCoder, x: np.ndarray, batch_size: int = 4096) -> None:
    """Re-estimate the final BatchNorm's statistics on the embeddings that will be indexed.

    Training sees augmented views, whose logit statistics differ from those of the clean
    embeddings stored in the index; centring each bit on the clean ones balances the bits of
    the codes actually searched (a cumulative average over one pass; weights are unchanged).
    """
    bn = model.net[-1]
    bn.reset_running_stats()
    momentum, bn.momentum = bn.momentum, None
    model.train()
    for s in range(0, len(x), batch_size):
        if len(x) - s >= 2:
            model(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])))
    bn.momentum = momentum
    model.eval()


def fit_probe(emb: Embeddings, config: FitConfig = FitConfig(), *, progress: bool = True) -> Probe:
    """Fit a probe on an embeddings file.

    CroVCA trains on two distinct views per sample, drawn among the cached augmented views and
    (``eval_view``, the default) the eval embedding; then its bits are re-centred on the eval
    embeddings (:func:`recalibrate_bits`). Baselines fit on the eval embeddings.

    Args:
        emb: the opened embeddings file.
        config: fit options.
        progress: show a progress bar.

    Returns:
        The fitted probe, with loss history, bit balance and the embeddings' provenance in ``meta``.

    Raises:
        InputError: bad options, no views for CroVCA, no labels for ``supervised``.
    """
    config.validate()
    if emb.n == 0:
        raise InputError(f"{emb.path} holds no embeddings (0 rows; see its /failures): nothing to fit a probe on")
    t0 = time.perf_counter()
    x = emb.embeddings()
    if not np.isfinite(x).all():
        raise InputError(f"{emb.path} contains NaN or inf embeddings")
    meta: dict = {"embeddings": emb.provenance()}
    if config.method == "crovca":
        if emb.num_views == 0:
            raise InputError(
                f"{emb.path} has no cached views; CroVCA trains on augmented views: "
                "re-run `hashindex embed ... --views 2` (or more)"
            )
        if config.eval_view or emb.num_views == 1:  # one cached view is paired with the eval one
            views = np.empty((emb.n, emb.num_views + 1, emb.dim), dtype=np.float32)
            views[:, 0] = x
            for v in range(emb.num_views):  # one view at a time: no second copy of all views
                views[:, v + 1] = emb.view(v)
        else:
            views = emb.views()
        labels = None
        if config.supervised:
            labels = emb.labels()
            if labels is None:
                raise InputError(f"--supervised needs labels, but {emb.path} has none (use class folders or a list file)")
        model, history = _train_crovca(views, labels, config, progress)
        recalibrate_bits(model, x)
        del views
        probe = Probe("crovca", config.bits, emb.dim, asdict(config), meta, state_to_arrays(model), model)
        meta["loss_history"] = history
    else:
        mean, w = fit_linear(x, config.bits, config.method, config.seed)
        probe = Probe(config.method, config.bits, emb.dim, asdict(config), meta, {"mean": mean, "W": w})
    meta["fit_seconds"] = round(time.perf_counter() - t0, 3)
    bal = bit_balance(pack(probe.logits(x)))
    meta["bit_balance"] = {"mean": float(bal.mean()), "min": float(bal.min()), "max": float(bal.max()), "per_bit": [round(float(b), 4) for b in bal]}
    return probe
