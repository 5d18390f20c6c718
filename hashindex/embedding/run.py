"""The embed stage: images → frozen-backbone features (+ cached augmented views) → HDF5 file."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hashindex.backbone.augment import augmented_view, eval_view, sample_params
from hashindex.backbone.frozen import Backbone
from hashindex.backbone.memory import auto_batch
from hashindex.backbone.model import backbone_for
from hashindex.backbone.onnx_runtime import runtime_name, with_runtime
from hashindex.backbone.preprocess import base_size, to_base
from hashindex.core.config import EmbedConfig
from hashindex.core.durable import OutputLock
from hashindex.core.errors import HashIndexError, InputError
from hashindex.embedding.decode import DecodeError
from hashindex.embedding.metadata import metadata_for, read_sidecar
from hashindex.embedding.sources import ImageSource
from hashindex.store.background import WriterThread
from hashindex.store.reader import clean_published, open_embeddings
from hashindex.store.resume import partial_path, remove_resume_folder
from hashindex.store.writer import EmbeddingsWriter

logger = logging.getLogger(__name__)


@dataclass
class EmbedSummary:
    """What an embed run produced.

    Attributes:
        path: the published file.
        rows: embedded images (rows of the file).
        failures: images that could not be decoded (listed in the file's ``/failures``).
        items: images of the source (``rows + failures``).
        failure_counts: failures per error class.
    """

    path: Path
    rows: int
    failures: int
    items: int
    failure_counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what was written and what failed."""
        text = f"wrote {self.path}: {self.rows} embeddings"
        if self.failures:
            kinds = ", ".join(
                f"{n} {cls}" for cls, n in sorted(self.failure_counts.items(), key=lambda t: (-t[1], t[0]))
            )
            text += f"; {self.failures} of {self.items} images could not be decoded ({kinds}; listed in {self.path.name}:/failures)"
        return text


class TooManyFailuresError(HashIndexError):
    """More images failed to decode than ``max_failures`` allows; the file was written anyway.

    Attributes:
        summary: the :class:`EmbedSummary` of the run.
    """

    exit_code = 1

    def __init__(self, summary: EmbedSummary, limit: float):
        self.summary = summary
        allowed = f"{limit:g}" if limit >= 1 or limit == 0 else f"{limit:g} (= {int(limit * summary.items)} images)"
        super().__init__(f"{summary.describe()}; that is more than --max-failures {allowed} allows")


def check_max_failures(value: float) -> float:
    """Validate ``max_failures`` (a count >= 1, or a fraction in [0, 1)).

    Raises:
        InputError: negative or NaN.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--max-failures must be a number, got {value!r}") from None
    if not v >= 0:  # also NaN
        raise InputError(f"--max-failures must be a count >= 0 or a fraction in [0, 1), got {value!r}")
    return v


def failures_allowed(max_failures: float, items: int) -> float:
    """How many failures ``max_failures`` allows among ``items`` images."""
    return max_failures if max_failures >= 1 or max_failures == 0 else max_failures * items


class BaseImages(Dataset):
    """Decodes items into uint8 base images; a failed decode yields its error instead."""

    def __init__(self, source: ImageSource, size: int, interpolation: str, start: int = 0, draft: bool = False):
        self.source, self.size, self.interp, self.start = source, size, interpolation, start
        self.draft = size if draft else None

    def __len__(self) -> int:
        return len(self.source) - self.start

    def __getitem__(self, k: int):
        # Errors travel as (class, message) pairs: plain data crosses worker processes safely.
        i = self.start + k
        try:
            img = self.source.load(i, self.draft)
        except DecodeError as e:
            return i, None, (e.error_class, e.message)
        try:
            return i, to_base(img, self.size, self.interp), None
        except Exception as e:
            return i, None, (type(e).__name__, str(e) or type(e).__name__)


def decode_workers(source: ImageSource, config: EmbedConfig) -> int:
    """Processes decoding images beside the forward passes: none for in-memory arrays (IDX)."""
    if config.num_workers is not None:
        return config.num_workers
    return 0 if source.kind in ("idx", "fashion-mnist") else min(4, max(1, (os.cpu_count() or 1) - 1))


def _collate(batch):
    return batch


def _source_attrs(source: ImageSource, config: EmbedConfig, keys: list[str]) -> dict:
    return {
        "source_digest": source.digest(keys),
        "augment": json.dumps(asdict(config.augment), sort_keys=True),
        "views": config.views,
        "seed": config.seed,
        "source": json.dumps(source.describe(), sort_keys=True),
        "label_names": json.dumps(source.label_names),
        "decode": json.dumps({"jpeg_draft": config.jpeg_draft}),
    }


def embed(
    source: ImageSource,
    out: str | os.PathLike,
    config: EmbedConfig = EmbedConfig(),
    *,
    progress: bool = True,
    restart: bool = False,
    runner=None,
    metadata=None,
) -> EmbedSummary:
    """Embed every image of ``source`` into the HDF5 file ``out``.

    Crash-safe and resumable (see :mod:`hashindex.store`): progress is kept in ``out.partial/``
    and the file is published atomically when complete; re-running the same call after an
    interruption, even a SIGKILL, resumes where it stopped, and on CPU gives the same file as an
    uninterrupted run; re-running it once the file is complete does nothing. A second run on the
    same output fails at once. Images that cannot be
    decoded are recorded in ``/failures`` (name, error class, message) and get no row.

    Args:
        source: the images.
        out: output path (``.h5``).
        config: embedding options.
        progress: show a progress bar.
        restart: discard the progress of an interrupted run instead of resuming it (needed when
            the source changed since: a resume compares the source's items and refuses).
        runner: what runs the embedding pass into the open writer (default: this process; see
            :func:`hashindex.embedding.ray_runner.ray_runner` for a Ray cluster).
        metadata: a sidecar of item metadata keyed by name (CSV, JSON Lines, parquet), stored
            with the embeddings (``/meta``) for filters.

    Returns:
        A summary with the number of rows and failures.

    Raises:
        InputError: bad options, an empty source, or an existing output file.
        OutputLockedError: another process is writing ``out``.
        TooManyFailuresError: more images failed than ``config.max_failures`` allows (raised
            after the file is published; it carries the summary).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if config.views < 0:
        raise InputError(f"--views must be >= 0, got {config.views}")
    if config.batch_size is not None and config.batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {config.batch_size}", setting="batch_size")
    if config.max_memory < 64 << 20:
        raise InputError(f"max_memory must be at least 64 MiB, got {config.max_memory} bytes", setting="max_memory")
    max_failures = check_max_failures(config.max_failures)
    if not config.commit_seconds >= 0:
        raise InputError(f"commit_seconds must be >= 0, got {config.commit_seconds}")
    if len(source) == 0:
        raise InputError("the source holds no images")
    if not out.parent.exists():
        raise InputError(f"output folder {out.parent} does not exist")
    exists = f"{out} already exists (made with other settings or by another program): remove it or choose another output path"
    sidecar = read_sidecar(metadata) if metadata else None  # its errors before any work
    keys = source.item_keys()  # names (+ size and mtime of files): a resume must see the same
    lock = OutputLock(out).acquire()
    writer = None
    try:
        if restart and partial_path(out).is_dir():
            logger.info("discarding the progress of an interrupted run in %s", partial_path(out))
            remove_resume_folder(partial_path(out))
        if out.exists() and not clean_published(out, _source_attrs(source, config, keys), clean=False):
            raise InputError(exists)  # refused before loading the backbone
        backbone = backbone_for(config)
        backbone = with_runtime(backbone, config.runtime)
        spec = backbone.spec
        s0 = base_size(spec)
        if config.batch_size is None:  # the eval view and the augmented views share one forward
            size = auto_batch(
                spec.image_size, 1 + config.views, config.max_memory, workers=decode_workers(source, config)
            )
            config = replace(config, batch_size=size)
            logger.info("embedding %d images per batch (within %.1f GiB)", config.batch_size, config.max_memory / 2**30)
        label_dim = 0 if source.labels is None else source.labels.shape[1]
        attrs = {"backbone": json.dumps(spec.to_dict(), sort_keys=True), **_source_attrs(source, config, keys)}
        if out.exists():  # the same command already finished (maybe killed while cleaning up)
            if not clean_published(out, attrs):
                raise InputError(exists)
            logger.info("%s is already complete", out)
            path = out
        else:
            writer = EmbeddingsWriter(
                out,
                n=len(source),
                dim=spec.num_features,
                views=config.views,
                label_dim=label_dim,
                attrs=attrs,
                lock=lock,
                commit_seconds=config.commit_seconds,
                item_keys=keys,
                item_meta=None if sidecar is None else (lambda names: metadata_for(names, sidecar)),
            )
            path = (runner or _run)(source, backbone, config, writer, s0, progress, tqdm)
    finally:
        if writer is not None:
            writer.close()
        lock.release(remove=out.exists() and not partial_path(out).exists())
    done = open_embeddings(path)
    fails = done.failures()
    counts = dict(Counter(f["error"] for f in fails))
    items = int(done.attrs.get("items_done", done.n + len(fails)))
    summary = EmbedSummary(path, done.n, len(fails), items, counts)
    if fails:
        logger.info("%s", summary.describe())  # the summary is returned (and the CLI prints it)
        if len(fails) > failures_allowed(max_failures, items):
            raise TooManyFailuresError(summary, max_failures)
    return summary


class WorkerDiedError(HashIndexError):
    """An image-decoding worker process died (killed from outside, or by the kernel for memory)."""


def _to_device(bases: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Base images as a uint8 ``(m, 3, S0, S0)`` batch on ``device``; for CUDA staged in pinned
    memory and copied without the host waiting for it."""
    if device.type != "cuda":
        return torch.from_numpy(np.stack(bases)).permute(0, 3, 1, 2)
    buf = torch.empty((len(bases), *bases[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(bases, out=buf.numpy())
    return buf.to(device, non_blocking=True).permute(0, 3, 1, 2)


def embed_batch(backbone: Backbone, config: EmbedConfig, s0: int, batch: list) -> tuple:
    """Features of one batch of ``(source index, base image or None, error or None)`` items.

    The eval view and the ``config.views`` augmented views go through the backbone as one
    batch, and the features come back to the host in one copy (the only wait on the device).

    Returns:
        ``(idx, embeddings, views, failures)``: the rows (int64 source indices, float32 features,
        ``(m, V, D)`` views or None) and the failed items as sorted ``(index, error class,
        message)``; a non-finite feature is never stored, its item is a failure instead.
    """
    spec = backbone.spec
    failed = [(i, e[0], e[1]) for i, _, e in batch if e is not None]
    ok = [(i, b) for i, b, e in batch if e is None]
    if not ok:
        return np.zeros(0, np.int64), None, None, failed
    x = _to_device([b for _, b in ok], backbone.device)
    idx = np.array([i for i, _ in ok], dtype=np.int64)
    inputs = [eval_view(x, spec)]
    inputs += [
        augmented_view(x, spec, sample_params(idx, v, config.seed, s0, config.augment)) for v in range(config.views)
    ]
    f = backbone.features(torch.cat(inputs) if config.views else inputs[0]).cpu().numpy()
    m = len(idx)
    emb = f[:m]
    views = np.ascontiguousarray(f[m:].reshape(config.views, m, -1).transpose(1, 0, 2)) if config.views else None
    finite = np.isfinite(emb).all(axis=1)
    if views is not None:
        finite &= np.isfinite(views).all(axis=(1, 2))
    for j in np.flatnonzero(~finite):
        failed.append((int(idx[j]), "NonFiniteFeatures", "the backbone produced NaN or inf features"))
    if not finite.all():
        failed.sort()
        idx, emb = idx[finite], emb[finite]
        views = None if views is None else views[finite]
    return idx, emb, views, failed


def append_batch(
    writer: EmbeddingsWriter, source: ImageSource, items_done: int, idx, emb, views, errors, **attrs
) -> None:
    """Hand the result of :func:`embed_batch` to the writer, with names, labels and failures."""
    failed = [(i, source.names[i], cls, msg) for i, cls, msg in errors]
    for _, name, cls, msg in failed:
        logger.warning("cannot decode %s: %s: %s", name, cls, msg)
    labels = source.labels[idx] if source.labels is not None and len(idx) else None
    writer.append(
        items_done=items_done,
        embeddings=emb if len(idx) else None,
        views=views if len(idx) else None,
        labels=labels,
        names=[source.names[i] for i in idx],
        source_index=idx,
        failures=failed,
        **attrs,
    )


def _run(
    source: ImageSource,
    backbone: Backbone,
    config: EmbedConfig,
    writer: EmbeddingsWriter,
    s0: int,
    progress: bool,
    tqdm,
) -> Path:
    spec = backbone.spec
    start = writer.items_done
    t0 = time.perf_counter()
    seconds = float(writer.attr("embed_seconds", 0.0))
    workers = decode_workers(source, config)
    loader = DataLoader(
        BaseImages(source, s0, spec.interpolation, start, config.jpeg_draft),
        batch_size=config.batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    bar = tqdm(total=len(source), initial=start, unit="img", desc=f"embed {writer.path.name}", disable=not progress)
    try:
        _embed_batches(loader, source, backbone, config, writer, s0, bar, seconds, t0)
    except RuntimeError as e:  # torch raises it from its SIGCHLD handler, wherever we are
        if "DataLoader worker" not in str(e):
            raise
        raise WorkerDiedError(
            f"an image-decoding worker process died ({str(e).splitlines()[0].strip()}): the progress up to item "
            f"{writer.items_done} is kept in {writer.work}; re-run the same command to resume"
        ) from None
    bar.close()
    return writer.finish(device=str(backbone.device), runtime=runtime_name(backbone))


def _embed_batches(
    loader,
    source: ImageSource,
    backbone: Backbone,
    config: EmbedConfig,
    writer: EmbeddingsWriter,
    s0: int,
    bar,
    seconds: float,
    t0: float,
) -> None:
    # Appends (and their fsyncs) run on their own thread while the next batch is embedded; at most
    # two finished batches wait for it.
    with WriterThread(depth=2) as writes:
        for batch in loader:
            idx, emb, views, errors = embed_batch(backbone, config, s0, batch)
            writes.submit(
                append_batch,
                writer,
                source,
                batch[-1][0] + 1,
                idx,
                emb,
                views,
                errors,
                embed_seconds=seconds + time.perf_counter() - t0,
            )
            bar.update(len(batch))
