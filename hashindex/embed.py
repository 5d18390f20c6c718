"""The embed stage: images → frozen-backbone features (+ cached augmented views) → HDF5 file."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentConfig, augmented_view, base_size, eval_view, sample_params, to_base
from .backbone import DEFAULT_MODEL, Backbone, load_backbone
from .errors import InputError
from .sources import DecodeError, ImageSource
from .store import EmbeddingsWriter, open_embeddings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedConfig:
    """Options of the embed stage (see ``hashindex embed --help``)."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    pretrained: bool = False
    image_size: int | None = None
    views: int = 0
    batch_size: int = 128
    device: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EmbedSummary:
    """What an embed run produced."""

    path: Path
    rows: int
    failures: int
    items: int


class _BaseImages(Dataset):
    """Decodes items into uint8 base images; a failed decode yields its error instead."""

    def __init__(self, source: ImageSource, size: int, interpolation: str, start: int = 0):
        self.source, self.size, self.interp, self.start = source, size, interpolation, start

    def __len__(self) -> int:
        return len(self.source) - self.start

    def __getitem__(self, k: int):
        i = self.start + k
        try:
            return i, to_base(self.source.load(i), self.size, self.interp), None
        except DecodeError as e:
            return i, None, e


def _collate(batch):
    return batch


def embed_images(backbone: Backbone, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Eval-view features of decoded RGB images (used by ``query`` for new photos)."""
    s0 = base_size(backbone.spec)
    out = []
    for s in range(0, len(images), batch_size):
        base = np.stack([to_base(im, s0, backbone.spec.interpolation) for im in images[s : s + batch_size]])
        x = torch.from_numpy(base).permute(0, 3, 1, 2).to(backbone.device)
        out.append(backbone.features(eval_view(x, backbone.spec)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def embed(source: ImageSource, out: str | os.PathLike, config: EmbedConfig = EmbedConfig(), *, progress: bool = True) -> EmbedSummary:
    """Embed every image of ``source`` into the HDF5 file ``out``.

    Writes ``out.partial`` and renames it when done; re-running the same call after an
    interruption resumes where it stopped. Images that cannot be decoded are recorded in
    ``/failures`` and skipped (they get no row).

    Args:
        source: the images.
        out: output path (``.h5``).
        config: embedding options.
        progress: show a progress bar.

    Returns:
        A summary with the number of rows and failures.

    Raises:
        InputError: bad options, an empty source, or an existing output file.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if config.views < 0:
        raise InputError(f"--views must be >= 0, got {config.views}")
    if config.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {config.batch_size}")
    if len(source) == 0:
        raise InputError("the source holds no images")
    if out.exists():
        raise InputError(f"{out} already exists: remove it or choose another output path")
    if not out.parent.exists():
        raise InputError(f"output folder {out.parent} does not exist")
    backbone = load_backbone(
        config.model, weights=config.weights, pretrained=config.pretrained,
        image_size=config.image_size, device=config.device,
    )  # fmt: skip
    spec = backbone.spec
    s0 = base_size(spec)
    label_dim = 0 if source.labels is None else source.labels.shape[1]
    attrs = {
        "backbone": json.dumps(spec.to_dict(), sort_keys=True),
        "augment": json.dumps(asdict(config.augment), sort_keys=True),
        "views": config.views,
        "seed": config.seed,
        "source": json.dumps(source.describe(), sort_keys=True),
        "label_names": json.dumps(source.label_names),
    }
    writer = EmbeddingsWriter(out, n=len(source), dim=spec.num_features, views=config.views, label_dim=label_dim, attrs=attrs)
    try:
        start = writer.items_done
        t0 = time.perf_counter()
        seconds = float(writer.attr("embed_seconds", 0.0))
        workers = config.num_workers
        if workers is None:
            workers = 0 if source.kind in ("idx", "fashion-mnist") else min(4, max(1, (os.cpu_count() or 1) - 1))
        loader = DataLoader(
            _BaseImages(source, s0, spec.interpolation, start), batch_size=config.batch_size,
            num_workers=workers, collate_fn=_collate,
        )  # fmt: skip
        bar = tqdm(total=len(source), initial=start, unit="img", desc=f"embed {out.name}", disable=not progress)
        for batch in loader:
            ok = [(i, b) for i, b, e in batch if e is None]
            failed = [(i, source.names[i], e.error_class, e.message) for i, _, e in batch if e is not None]
            for _, name, cls, msg in failed:
                logger.warning("cannot decode %s: %s: %s", name, cls, msg)
            idx = np.array([i for i, _ in ok], dtype=np.int64)
            emb = views = labels = None
            if len(ok):
                x = torch.from_numpy(np.stack([b for _, b in ok])).permute(0, 3, 1, 2).to(backbone.device)
                emb = backbone.features(eval_view(x, spec)).cpu().numpy()
                if config.views:
                    views = np.stack(
                        [
                            backbone.features(augmented_view(x, spec, sample_params(idx, v, config.seed, s0, config.augment)))
                            .cpu()
                            .numpy()
                            for v in range(config.views)
                        ],
                        axis=1,
                    )
                if source.labels is not None:
                    labels = source.labels[idx]
            writer.append(
                items_done=batch[-1][0] + 1, embeddings=emb, views=views, labels=labels,
                names=[source.names[i] for i in idx], source_index=idx, failures=failed,
                embed_seconds=seconds + time.perf_counter() - t0,
            )  # fmt: skip
            bar.update(len(batch))
        bar.close()
        rows, items = writer.rows, writer.items_done
        path = writer.finish(device=str(backbone.device))
    finally:
        writer.close()
    nfail = len(open_embeddings(path).failures())
    if nfail:
        logger.warning("%d of %d images could not be decoded; they are listed in %s:/failures", nfail, items, path)
    return EmbedSummary(path, rows, nfail, items)
