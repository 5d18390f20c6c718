"""The finetune stage: LoRA adapters on the frozen backbone trained jointly with a HashCoder.

CroVCA's second mode. Each step makes two augmented views of every image of the batch on the
fly (the recipe and per-image seeding of :mod:`hashindex.backbone.augment`, as ``embed --views``), runs
them through the backbone with its adapters and the HashCoder, and minimises the same loss as
``fit-probe`` (cross-view BCE, or with ``supervised`` BCE to fit-probe's class targets, plus the
coding rate). The first
``head_epochs`` train the HashCoder alone on the untouched backbone (its adapters start at
zero), then adapters and HashCoder train together. Only adapter and HashCoder weights change;
the backbone's weights and BatchNorm statistics never do.

OUT holds ``adapter.safetensors`` (the adapters), ``adapter.json`` (config, provenance, loss
history) and ``probe/`` (a regular probe folder whose provenance names the adapter). A
checkpoint written durably after every epoch makes the run resumable: re-running the same
command after an interruption, even kill -9, continues from the last finished epoch and on CPU
ends with the same files as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hashindex.backbone.augment import augmented_view, eval_view, sample_params
from hashindex.backbone.frozen import Backbone
from hashindex.backbone.lora import (
    ADAPTER_JSON,
    LoRAConfig,
    inject,
    set_adapter_training,
    target_layers,
)
from hashindex.backbone.model import backbone_for
from hashindex.backbone.preprocess import base_size
from hashindex.core.config import AugmentConfig, BackboneOptions, FitConfig, TargetKind
from hashindex.core.durable import OutputLock
from hashindex.core.errors import InputError
from hashindex.embedding.run import BaseImages
from hashindex.embedding.sources import ImageSource
from hashindex.probe.finetune_io import (
    CHECKPOINT,
    checkpoint_tensors,
    eval_features,
    load_checkpoint,
    publish,
    restore_checkpoint,
    write_bytes,
)
from hashindex.probe.fit import class_codebook, cosine_lr, optimizer_step, view_pairs
from hashindex.probe.hashcoder import HashCoder
from hashindex.probe.losses import crovca_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig(BackboneOptions):
    """Options of ``hashindex finetune`` (the paper's LoRA defaults: rank 16, alpha 16, dropout 0.1).

    ``lr`` is the HashCoder's peak learning rate (fit-probe's 1e-3); ``adapter_lr`` the
    adapters', half of it: they perturb a pretrained network whose features the head is
    fitting at the same time, and a large step there makes the codes chase a moving target.
    Both follow a cosine schedule per step down to ``min_lr``, the adapters' over the joint epochs.

    ``eval_view``: as fit-probe's, a sample's two views are two distinct of {the eval view, two
    augmented views}, so the un-augmented images that get indexed are part of what is trained on.
    """

    bits: int = 64
    supervised: bool = False
    targets: TargetKind = "codebook"  # supervised targets, as fit-probe's (FitConfig.targets)
    hashcoder: str = "small"
    epochs: int = 5
    head_epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    adapter_lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-2
    eps: float = 0.05
    reg: float | None = None  # None: as fit-probe, by code length
    eval_view: bool = True
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"
    seed: int = 0

    def fit_config(self) -> FitConfig:
        """The HashCoder's share of the options, as fit-probe records them."""
        return FitConfig(
            method="crovca",
            bits=self.bits,
            supervised=self.supervised,
            targets=self.targets,
            hashcoder=self.hashcoder,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            min_lr=self.min_lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            reg=self.reg,
            eval_view=self.eval_view,
            device=self.device,
            seed=self.seed,
        )

    def validate(self) -> None:
        self.fit_config().validate()
        self.lora.validate()
        if not 0 <= self.head_epochs <= self.epochs:
            raise InputError(f"--head-epochs must be in [0, --epochs], got {self.head_epochs}")
        if not self.adapter_lr > 0:
            raise InputError(f"--adapter-lr must be positive, got {self.adapter_lr}")
        if self.batch_size < 2:
            raise InputError("--batch-size must be at least 2 (BatchNorm and the coding rate need two samples)")


@dataclass
class FinetuneSummary:
    """What a finetune run produced."""

    out: Path
    images: int
    epochs: int
    seconds: float
    adapter_sha256: str
    trainable: int
    backbone_params: int
    history: list[dict]

    def describe(self) -> str:
        last = self.history[-1]["loss"] if self.history else float("nan")
        return (
            f"wrote {self.out}: adapters on {self.trainable:,} weights ({100 * self.trainable / max(1, self.backbone_params):.1f}% of the "
            f"backbone's {self.backbone_params:,}) and the probe, {self.images} images, {self.epochs} epochs in {self.seconds:.0f}s, final loss {last:.4f}"
        )


def _settings(source: ImageSource, config: FinetuneConfig) -> dict:
    return json.loads(json.dumps({"config": asdict(config), "source": source.describe()}, sort_keys=True))


def _decode(source: ImageSource, s0: int, interp: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """All images as uint8 base images ``(n, 3, S0, S0)`` with their source indices; failures skipped."""
    from tqdm.auto import tqdm

    ds = BaseImages(source, s0, interp)
    bases, idx = [], []
    for k in tqdm(range(len(ds)), unit="img", desc="decode", disable=not progress):
        i, b, err = ds[k]
        if err is not None:
            logger.warning("cannot decode %s: %s: %s (skipped)", source.names[i], *err)
            continue
        bases.append(b.transpose(2, 0, 1))
        idx.append(i)
    if len(idx) < 2:
        raise InputError(f"finetune needs at least 2 decodable images, the source has {len(idx)}")
    return np.ascontiguousarray(np.stack(bases)), np.array(idx, dtype=np.int64)


def _forward(model: torch.nn.Module, x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        f = model.forward_head(model.forward_features(x.contiguous(memory_format=torch.channels_last)), pre_logits=True)
    return f.float()


def finetune(
    source: ImageSource, out: str | os.PathLike, config: FinetuneConfig = FinetuneConfig(), *, progress: bool = True
) -> FinetuneSummary:
    """Train LoRA adapters and a HashCoder on the images of ``source``; write them into ``out``.

    Args:
        source: the training images (labels needed for ``supervised``).
        out: output folder (created).
        config: options.
        progress: show progress bars.

    Returns:
        A summary (sizes, time, loss history, the adapter's sha256).

    Raises:
        InputError: bad options, no images, no labels for ``supervised``, OUT holding another run.
        OutputLockedError: another process is writing OUT.
    """
    config.validate()
    out = Path(out)
    settings = _settings(source, config)
    if not out.parent.exists():
        raise InputError(f"output folder {out.parent} does not exist")
    with OutputLock(out):
        done = out / ADAPTER_JSON
        if done.is_file():
            doc = json.loads(done.read_text())
            if doc.get("settings") != settings:
                raise InputError(
                    f"{out} already holds a finetune run with other settings: remove it or choose another OUT"
                )
            (out / CHECKPOINT).unlink(missing_ok=True)  # a run killed while cleaning up
            logger.info("%s is already complete", out)
            return _summary(out, doc)
        out.mkdir(exist_ok=True)
        return _run(source, out, config, settings, progress)


def _summary(out: Path, doc: dict) -> FinetuneSummary:
    return FinetuneSummary(
        out,
        doc["images"],
        doc["config"]["epochs"],
        doc["seconds"],
        doc["adapter_sha256"],
        doc["trainable_params"],
        doc["backbone_params"],
        doc["history"],
    )


def _run(source: ImageSource, out: Path, config: FinetuneConfig, settings: dict, progress: bool) -> FinetuneSummary:
    from tqdm.auto import tqdm

    bb = backbone_for(config)
    spec, dev, model = bb.spec, bb.device, bb.model
    backbone_params = sum(p.numel() for p in model.parameters())
    if config.supervised and source.labels is None:
        raise InputError("--supervised needs labels, but the source has none (use class folders or a list file)")
    names = target_layers(model, config.lora.layers)
    s0 = base_size(spec)
    bases, idx = _decode(source, s0, spec.interpolation, progress)
    classes = source.labels[idx] if config.supervised else None  # (n, C) multi-hot
    labels = None if classes is None else torch.from_numpy(classes.astype(np.float32)).to(dev)
    n = len(idx)
    torch.manual_seed(config.seed)
    head = HashCoder(spec.num_features, config.bits, config.hashcoder).to(dev)
    layers = inject(model, names, config.lora, config.seed)
    book = _codebook(bb, head, bases, classes, config)  # adapters start at zero: untuned features
    codes = None if book is None else torch.from_numpy(book.codes).to(dev)
    adapters = [p for m in layers for p in (m.lora_A, m.lora_B)]
    for p in adapters:
        p.requires_grad_(True)
    trainable = sum(p.numel() for p in adapters)
    opt = torch.optim.AdamW(
        [{"params": list(head.parameters()), "lr": config.lr}, {"params": adapters, "lr": config.adapter_lr}],
        weight_decay=config.weight_decay,
    )
    steps = sum(1 for s in range(0, n, config.batch_size) if n - s >= 2)
    total, warm = steps * config.epochs, steps * config.head_epochs
    history: list[dict] = []
    start, seconds = 0, 0.0
    ckpt = load_checkpoint(out / CHECKPOINT, settings)
    if ckpt is not None:
        state, tensors = ckpt
        restore_checkpoint(tensors, head, model, opt, dev)
        start, seconds, history = state["epoch"], state["seconds"], state["history"]
        logger.info("resuming %s after epoch %d", out, start)
    logger.info(
        "LoRA rank %d on %d layers: %d trainable weights, %d in the backbone",
        config.lora.rank,
        len(layers),
        trainable,
        backbone_params,
    )
    bar = tqdm(
        total=total, initial=start * steps, unit="step", desc=f"finetune {config.bits} bits", disable=not progress
    )
    data = torch.from_numpy(bases)
    rate_weight = config.fit_config().rate_weight
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        joint = epoch >= config.head_epochs
        torch.manual_seed(config.seed * 100_003 + epoch)  # adapter dropout: the same on a resumed run
        perm = np.random.default_rng([config.seed, epoch]).permutation(n)
        head.train()
        set_adapter_training(model, joint)
        sums, step = np.zeros(3), epoch * steps
        for s in range(0, n, config.batch_size):
            b = perm[s : s + config.batch_size]
            if len(b) < 2:
                continue
            x = data[torch.from_numpy(b)].to(dev)
            views = [
                augmented_view(x, spec, sample_params(idx[b], 2 * epoch + j, config.seed, s0, config.augment))
                for j in (0, 1)
            ]
            if config.eval_view:
                views = pick_views(
                    torch.stack([eval_view(x, spec), *views]), np.random.default_rng([config.seed, epoch, s])
                )
            with torch.set_grad_enabled(joint):
                f = _forward(model, torch.cat(views), dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                z = head(f)
            z1, z2 = z.float().chunk(2)
            opt.param_groups[0]["lr"] = cosine_lr(step, total, config.lr, config.min_lr)
            opt.param_groups[1]["lr"] = (
                cosine_lr(step - warm, total - warm, config.adapter_lr, config.min_lr) if joint else 0.0
            )
            y = None if labels is None else labels[torch.from_numpy(b).to(dev)]
            now = optimizer_step(opt, *crovca_loss(z1, z2, y, config.eps, rate_weight, codes))
            sums += now
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{now[0]:.4f}", epoch=epoch + 1)
        m = sums / max(1, steps)
        seconds += time.perf_counter() - t0
        history.append(
            {
                "epoch": epoch + 1,
                "trained": "hashcoder+adapters" if joint else "hashcoder",
                "loss": float(m[0]),
                "align": float(m[1]),
                "coding_rate": float(m[2]),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        logger.info("epoch %d (%s): loss %.4f (align %.4f, rate %.4f)", epoch + 1, history[-1]["trained"], *m)
        from safetensors.torch import save

        meta = {"state": json.dumps({"epoch": epoch + 1, "seconds": seconds, "history": history, "settings": settings})}
        write_bytes(out / CHECKPOINT, save(checkpoint_tensors(head, model, opt), metadata=meta))
    bar.close()
    set_adapter_training(model, False)
    doc = publish(
        out, source, config, settings, bb, head, bases, idx, trainable, backbone_params, history, seconds, book
    )
    return _summary(out, doc)


def _codebook(bb: Backbone, head: HashCoder, bases: np.ndarray, labels: np.ndarray | None, config: FinetuneConfig):
    """fit-probe's class codebook for supervised codebook targets, aligned to the untrained
    HashCoder's class prototypes on the eval features of (a sample of) the training images."""
    if labels is None or config.targets != "codebook":
        return None
    return class_codebook(head, lambda r: eval_features(bb, bases[r]), labels, config.seed)


def pick_views(stack: torch.Tensor, gen: np.random.Generator) -> list[torch.Tensor]:
    """Two distinct views per sample out of ``stack`` ``(V, m, ...)``, drawn as fit-probe draws
    its pairs among the eval and cached views."""
    v, m = stack.shape[:2]
    a, b = view_pairs(gen, v, m)
    rows = torch.arange(m)
    return [stack[torch.from_numpy(a), rows], stack[torch.from_numpy(b), rows]]
