"""The fit-probe stage: CroVCA training on cached views, or a baseline fit, on an embeddings file."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from hashindex.backbone.frozen import resolve_device
from hashindex.core.codes import bit_balance, pack
from hashindex.core.config import FitConfig
from hashindex.core.errors import InputError
from hashindex.probe.artifact import Probe, state_to_arrays
from hashindex.probe.baselines import fit_linear
from hashindex.probe.feature_views import FeatureViewConfig, feature_view_fn, repeated_views
from hashindex.probe.hashcoder import HashCoder
from hashindex.probe.losses import crovca_loss
from hashindex.probe.sampling import read_rows, sample_rows
from hashindex.probe.targets import Codebook, align_codebook, make_codebook
from hashindex.store.reader import Embeddings

logger = logging.getLogger(__name__)

# Fields added after probes were first saved, with the values that reproduce how those probes were
# fitted (their probe.json lacks them): fixed 5 epochs, prototype targets.
LEGACY_FIELDS = {"min_steps": 0, "targets": "prototype"}
DEFAULT_EPOCHS = 5
# Fewer items than this cannot give balanced bits (one item moves a bit's balance by 1/n, over 6%
# below 16) nor the batch statistics the HashCoder's BatchNorm and coding rate rely on: refused.
MIN_ITEMS = 16
# Below this many items CroVCA is not better than ITQ or the float embeddings: a warning.
SMALL_COLLECTION = 500


def config_from_record(record: dict) -> FitConfig:
    """The FitConfig recorded in a probe.json (older records get their legacy values)."""
    known = {f for f in FitConfig.__dataclass_fields__}
    return FitConfig(**{**LEGACY_FIELDS, **{k: v for k, v in record.items() if k in known}})


def resolve_epochs(n: int, cfg: FitConfig) -> int:
    """Epochs to train on n samples: the explicit ``cfg.epochs``, else enough for ``min_steps``."""
    if cfg.epochs is not None:
        return cfg.epochs
    return max(DEFAULT_EPOCHS, math.ceil(cfg.min_steps / max(1, math.ceil(n / cfg.batch_size))))


# Samples whose class prototypes (under the untrained model) the codebook is aligned to.
CODEBOOK_SAMPLE = 20000


@torch.no_grad()
def class_codebook(model: HashCoder, features, labels: np.ndarray, seed: int, limit: int = CODEBOOK_SAMPLE) -> Codebook:
    """The class codebook aligned to the untrained model's class prototypes on a sample of
    ``limit`` rows; ``features(rows)`` gives the model's inputs for an array of row numbers."""
    book = make_codebook(labels.shape[1], model.bits, seed)
    sel = np.random.default_rng(seed).permutation(len(labels))[:limit]
    dev = next(model.parameters()).device
    model.eval()
    z = torch.cat(
        [
            model(torch.from_numpy(np.ascontiguousarray(features(sel[s : s + 4096]))).to(dev)).float().cpu()
            for s in range(0, len(sel), 4096)
        ]
    ).numpy()
    model.train()
    y = labels[sel].astype(np.float64)
    protos = (y.T @ (z - z.mean(0))) / np.maximum(y.sum(0), 1)[:, None]
    return Codebook(align_codebook(book.codes, protos), book.min_distance)


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / max(1, total)))


def optimizer_step(
    opt: torch.optim.Optimizer, loss: torch.Tensor, align: torch.Tensor, rate: torch.Tensor
) -> np.ndarray:
    """One optimiser step on ``loss``; returns (loss, alignment, rate) as floats for the epoch's means."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return np.array((loss.item(), align.item(), rate.item()))


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as one fused kernel per step where torch has one for the parameters' device (CUDA;
    CPU since torch 2.4): the default per-tensor loop cost about a fifth of a CPU step of the
    small HashCoder. The fused update rounds differently, so codes differ from the loop's in the
    last bits of the weights (quality measured equal: benchmarks/results/fit_speed.json)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a device or torch without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def view_pairs(gen: np.random.Generator, v: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct views ``(a, b)`` among ``v`` for each of ``m`` samples, uniformly."""
    a = gen.integers(0, v, m)
    return a, (a + gen.integers(1, v, m)) % v


def epoch_pairs(gen: np.random.Generator, n: int, v: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's samples and view pairs: ``(perm, a, b)``, sample ``perm[j]`` seen in views
    ``a[j] != b[j]``; batches are consecutive runs of ``batch_size``. Drawn in the order the
    per-step sampler drew them (a final batch of one is skipped and draws nothing), so a seed
    gives the same pairs as before, all at once for the device."""
    perm = gen.permutation(n)
    a, b = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for s in range(0, n, batch_size):
        k = min(batch_size, n - s)
        if k < 2:  # BatchNorm and the coding rate need two samples
            continue
        a[s : s + k], b[s : s + k] = view_pairs(gen, v, k)
    return perm, a, b


def _view_table(views: np.ndarray, dev: torch.device) -> tuple[torch.Tensor, int]:
    """The views as one ``(rows, D)`` table on ``dev`` and the rows per sample: view ``j`` of
    sample ``i`` is row ``i * per + j`` (``per`` 0: the views all alias one array, every view of
    sample ``i`` is row ``i``)."""
    n, v, d = views.shape
    if views.strides[1] == 0:  # repeated_views: every view is the same row
        return torch.from_numpy(np.ascontiguousarray(views[:, 0])).to(dev), 0
    return torch.from_numpy(np.ascontiguousarray(views)).reshape(n * v, d).to(dev), v


def _batch_rows(perm: np.ndarray, a: np.ndarray, b: np.ndarray, per: int, batch_size: int) -> np.ndarray:
    """Table rows of an epoch, batch by batch: each batch's first views, then its second views."""
    first, second = (perm * per + a, perm * per + b) if per else (perm, perm)
    return np.concatenate(
        [
            np.concatenate([first[s : s + batch_size], second[s : s + batch_size]])
            for s in range(0, len(perm), batch_size)
        ]
    )


def _train_crovca(
    views: np.ndarray,
    labels: np.ndarray | None,
    cfg: FitConfig,
    progress: bool,
    view_fn=None,
) -> tuple[HashCoder, list[dict], Codebook | None]:
    """Train a HashCoder on ``(n, V, D)`` cached views; two distinct views per sample per step
    (each passed through ``view_fn`` when given: feature-space views).

    The views stay on the device, each epoch's pairs go there once as row indices, and the
    epoch's losses are summed there: a step never waits on the host. Returns the model on the
    training device, in eval mode.
    """
    from tqdm.auto import tqdm

    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    n, v, d = views.shape
    model = HashCoder(d, cfg.bits, cfg.hashcoder).to(dev)
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    bs = cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    epochs = resolve_epochs(n, cfg)
    total = steps_per_epoch * epochs
    book = (
        class_codebook(model, lambda r: views[r, 0], labels, cfg.seed)
        if labels is not None and cfg.targets == "codebook"
        else None
    )
    codes = None if book is None else torch.from_numpy(book.codes).to(dev)
    table, per = _view_table(views, dev)
    lab = None if labels is None else torch.from_numpy(labels.astype(np.float32)).to(dev)
    history, step = [], 0
    bar = tqdm(total=total, unit="step", desc=f"fit crovca {cfg.bits} bits", disable=not progress)
    model.train()
    for epoch in range(epochs):
        perm, a, b = epoch_pairs(gen, n, v, bs)
        rows = torch.from_numpy(_batch_rows(perm, a, b, per, bs)).to(dev)
        samples = torch.from_numpy(perm).to(dev) if lab is not None else None
        sums = torch.zeros(3, dtype=torch.float64, device=dev)
        for s in range(0, n, bs):
            m = min(bs, n - s)
            if m < 2:  # BatchNorm and the coding rate need two samples
                continue
            x = table.index_select(0, rows[2 * s : 2 * s + 2 * m])  # both views of the batch
            if view_fn is not None:
                x = torch.cat([view_fn(x[:m]), view_fn(x[m:])])
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, cfg.lr, cfg.min_lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                z = model(x)
            z1, z2 = z.float().chunk(2)
            y = None if lab is None else lab[samples[s : s + m]]
            loss, align, rate = crovca_loss(z1, z2, y, cfg.eps, cfg.rate_weight, codes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack((loss.detach(), align.detach(), rate.detach())).double()
            step += 1
            bar.update(1)
        mean = (sums / max(1, steps_per_epoch)).tolist()  # the epoch's one wait on the device
        history.append({"epoch": epoch + 1, "loss": mean[0], "align": mean[1], "coding_rate": mean[2]})
        bar.set_postfix(loss=f"{mean[0]:.4f}")
        logger.info("epoch %d: loss %.4f (align %.4f, rate %.4f)", epoch + 1, *mean)
    bar.close()
    return model.eval(), history, book


@torch.no_grad()
def recalibrate_bits(
    model: HashCoder, x: np.ndarray, batch_size: int = 4096, *, logits: bool = False
) -> np.ndarray | None:
    """Re-estimate the final BatchNorm's statistics on the embeddings that will be indexed.

    Training sees augmented views, whose logit statistics differ from those of the clean
    embeddings stored in the index; centring each bit on the clean ones balances the bits of
    the codes actually searched (a cumulative average over one pass; weights are unchanged).
    Runs on the model's device.

    Args:
        logits: also return the recalibrated model's ``(n, bits)`` float32 logits of ``x``, from
            the same pass when the outputs before the BatchNorm take no more memory than ``x``.
    """
    bn, body = model.net[-1], model.net[:-1]
    dev = next(model.parameters()).device
    bn.reset_running_stats()
    momentum, bn.momentum = bn.momentum, None
    model.train()
    keep = logits and model.bits <= x.shape[1]
    kept = []
    for s in range(0, len(x), batch_size):
        h = body(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(dev))
        if len(h) >= 2:  # BatchNorm statistics need two rows
            bn(h)
        if keep:
            kept.append(h)
    bn.momentum = momentum
    model.eval()
    if not logits:
        return None
    if not keep:
        return _logits(model, x)
    return (
        np.concatenate([bn(h).float().cpu().numpy() for h in kept]) if kept else np.zeros((0, model.bits), np.float32)
    )


@torch.no_grad()
def _logits(model: HashCoder, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Eval logits of ``x`` on the model's device (what :meth:`Probe.logits` computes on CPU)."""
    dev = next(model.parameters()).device
    return np.concatenate(
        [
            model(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(dev)).float().cpu().numpy()
            for s in range(0, len(x), batch_size)
        ]
    )


def fit_probe(emb: Embeddings, config: FitConfig = FitConfig(), *, progress: bool = True) -> Probe:
    """Fit a probe on an embeddings file.

    CroVCA trains on two distinct views per sample, drawn among the cached augmented views and
    (``eval_view``, the default) the eval embedding; then its bits are re-centred on the eval
    embeddings (:func:`recalibrate_bits`). Baselines fit on the eval embeddings.
    Only a uniform sample of ``config.sample`` rows is read (streamed in chunks), so files larger
    than memory fit; without cached views CroVCA makes feature-space views
    (:mod:`hashindex.probe.feature_views`).

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
    if config.method == "crovca":
        config = replace(config, reg=config.rate_weight)  # the probe records the weight it was fitted with
    if emb.n < MIN_ITEMS:
        raise InputError(
            f"{emb.path} holds {emb.n} embeddings; fitting a probe needs at least {MIN_ITEMS} (fewer cannot "
            "balance its bits): embed more images, or search this collection by its float embeddings"
        )
    if emb.n < SMALL_COLLECTION and config.method == "crovca":
        logger.warning(
            "%s holds %d items: below %d, CroVCA codes are not better than ITQ's or the float embeddings "
            "(BENCHMARKS.md, small collections)",
            emb.path,
            emb.n,
            SMALL_COLLECTION,
        )
    t0 = time.perf_counter()
    rows = sample_rows(emb.n, config.sample, config.seed)  # a file of any size: fit on a sample
    x = read_rows(emb, rows)
    if not np.isfinite(x).all():
        raise InputError(f"{emb.path} contains NaN or inf embeddings")
    meta: dict = {"embeddings": emb.provenance(), "sample_rows": len(x)}
    if config.method == "crovca":
        view_fn = None
        if emb.num_views == 0:  # imported embeddings: views made in feature space
            logger.warning(
                "%s has no cached views (embed --views 2 makes them): CroVCA trains on feature-space views", emb.path
            )
            views, view_fn = repeated_views(x), feature_view_fn(x, config.seed)
            meta["feature_views"] = asdict(FeatureViewConfig())
        elif config.eval_view or emb.num_views == 1:  # one cached view is paired with the eval one
            views = np.empty((len(x), emb.num_views + 1, emb.dim), dtype=np.float32)
            views[:, 0] = x
            for v in range(emb.num_views):  # one view at a time: no second copy of all views
                views[:, v + 1] = read_rows(emb, rows, view=v)
        else:
            views = (
                emb.views()
                if rows is None
                else np.stack([read_rows(emb, rows, view=v) for v in range(emb.num_views)], axis=1)
            )
        labels = None
        if config.supervised:
            labels = emb.labels()
            if labels is None:
                raise InputError(
                    f"--supervised needs labels, but {emb.path} has none (use class folders or a list file)"
                )
            labels = labels if rows is None else labels[rows]
        model, history, book = _train_crovca(views, labels, config, progress, view_fn)
        del views
        logits = recalibrate_bits(model, x, logits=True)  # on the training device, with the logits for the bit balance
        probe = Probe("crovca", config.bits, emb.dim, asdict(config), meta, state_to_arrays(model.cpu()), model)
        meta["loss_history"] = history
        meta["schedule"] = {"epochs": len(history), "steps": len(history) * math.ceil(len(x) / config.batch_size)}
        if book is not None:
            meta["codebook"] = book.to_meta()
    else:
        mean, w = fit_linear(x, config.bits, config.method, config.seed)
        probe = Probe(config.method, config.bits, emb.dim, asdict(config), meta, {"mean": mean, "W": w})
    meta["fit_seconds"] = round(time.perf_counter() - t0, 3)
    if config.method != "crovca":
        logits = probe.logits(x)
    bal = bit_balance(pack(logits))
    meta["bit_balance"] = {
        "mean": float(bal.mean()),
        "min": float(bal.min()),
        "max": float(bal.max()),
        "per_bit": [round(float(b), 4) for b in bal],
    }
    return probe
