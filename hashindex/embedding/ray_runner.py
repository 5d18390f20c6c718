"""The embed stage on a Ray cluster: Ray Data reads the item list, decodes and resizes images in
CPU tasks, and runs the backbone in an actor pool (one actor per GPU, or CPU actors).

How the result stays the file a single-process run writes:

- The items ``[done, n)`` are cut into blocks of ``batch_size`` items (the grid of a
  single-process run, so every forward pass sees the same batch); one Ray row is one block.
- An actor embeds a block with :func:`hashindex.embedding.run.embed_batch` (the single-process code)
  and writes it durably as ``OUT.partial/ray-<start>-<end>.npz`` (temporary name, fsync,
  rename), so a finished block survives a worker or driver crash. On a multi-node cluster
  ``OUT`` must therefore be in a folder every node sees at the same path (a shared file system).
- When every block is there, the driver hands them, in source order, to the ordinary
  :class:`~hashindex.store.EmbeddingsWriter`, which assembles and publishes the file as usual.
- Re-running the same command resumes: the writer's committed items and the finished blocks
  are kept, and only the missing items go through Ray again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hashindex.backbone.onnx_runtime import with_runtime
from hashindex.core.config import EmbedConfig
from hashindex.core.durable import write_durably
from hashindex.core.errors import InputError
from hashindex.core.extras import require
from hashindex.embedding.run import BaseImages, append_batch, embed_batch
from hashindex.embedding.sources import ImageSource
from hashindex.store.writer import EmbeddingsWriter

logger = logging.getLogger(__name__)

_BLOCK_RE = re.compile(r"^ray-(\d{12})-(\d{12})\.npz$")
_SOURCES: dict = {}  # per worker process: the image source behind an object ref, fetched once


def block_path(work: Path, start: int, end: int) -> Path:
    return work / f"ray-{start:012d}-{end:012d}.npz"


def finished_blocks(work: Path, start: int, n: int) -> list[tuple[int, int, Path]]:
    """Readable, non-overlapping block files covering items at or after ``start``, in order;
    unreadable or overlapping ones are deleted (their items are embedded again)."""
    found = []
    for p in work.iterdir() if work.is_dir() else ():
        m = _BLOCK_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    keep, pos = [], start
    for s, e, p in sorted(found):
        ok = s >= pos and e <= n and s < e
        if ok:
            try:
                with np.load(p, allow_pickle=False) as z:
                    ok = [int(v) for v in z["range"]] == [s, e]
            except Exception:
                ok = False
        if ok:
            keep.append((s, e, p))
            pos = e
        else:
            p.unlink(missing_ok=True)
    return keep


def pending_blocks(start: int, n: int, done: list[tuple[int, int, Path]], batch: int) -> list[tuple[int, int]]:
    """The blocks still to embed: the gaps between finished blocks, on the grid of ``batch``."""
    out, pos = [], start
    for s, e, _ in done + [(n, n, None)]:
        while pos < s:
            end = min(s, (pos // batch + 1) * batch)
            out.append((pos, end))
            pos = end
        pos = max(pos, e)
    return out


def _decode(batch: dict, source_ref, size: int, interpolation: str, draft: bool) -> dict:
    """Ray task: decode and resize one block of items into uint8 base images (errors kept)."""
    import ray

    key = source_ref.hex()
    if key not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[key] = ray.get(source_ref)
    images = BaseImages(_SOURCES[key], size, interpolation, draft=draft)
    s, e = int(batch["start"][0]), int(batch["end"][0])
    items = [images[i] for i in range(s, e)]
    shape = next((b.shape for _, b, _ in items if b is not None), (size, size, 3))
    pixels = np.zeros((e - s,) + tuple(shape), np.uint8)
    for k, (_, b, _) in enumerate(items):
        if b is not None:
            pixels[k] = b
    errors = {str(i): list(err) for i, _, err in items if err is not None}
    return {
        "start": np.array([s]),
        "end": np.array([e]),
        "pixels": pixels[None],
        "errors": np.array([json.dumps(errors)]),
    }


class _EmbedActor:
    """Ray actor: holds the backbone; embeds a block and writes it as a block file."""

    def __init__(self, config: dict, spec: dict, work: str, s0: int, threads: int | None):
        import torch

        from hashindex.backbone.model import backbone_for
        from hashindex.core.config import AugmentConfig

        if threads:
            torch.set_num_threads(threads)
        aug = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.pop("augment").items()})
        self.config = EmbedConfig(**config, augment=aug)
        c = self.config
        self.backbone = backbone_for(c)
        if self.backbone.spec.to_dict() != spec:  # another node, other weights: refuse to mix them
            raise InputError(
                f"the backbone on this Ray worker differs from the driver's: {self.backbone.spec.to_dict()} vs {spec}"
            )
        self.backbone = with_runtime(self.backbone, c.runtime, threads)
        self.work, self.s0 = Path(work), s0

    def __call__(self, batch: dict) -> dict:
        s, e = int(batch["start"][0]), int(batch["end"][0])
        pixels = batch["pixels"][0]
        errors = {int(k): tuple(v) for k, v in json.loads(str(batch["errors"][0])).items()}
        items = [(i, None if i in errors else pixels[i - s], errors.get(i)) for i in range(s, e)]
        idx, emb, views, failed = embed_batch(self.backbone, self.config, self.s0, items)
        d, v = self.backbone.spec.num_features, self.config.views
        arrays = {
            "range": np.array([s, e], np.int64),
            "source_index": idx,
            "embeddings": emb if emb is not None else np.zeros((0, d), np.float32),
            "views": views if views is not None else np.zeros((0, v, d), np.float32),
            "fail_index": np.array([f[0] for f in failed], np.int64),
            "fail_error": np.array([f[1] for f in failed] or [""])[: len(failed)],
            "fail_message": np.array([f[2] for f in failed] or [""])[: len(failed)],
        }
        write_durably(block_path(self.work, s, e), lambda fh: np.savez(fh, **arrays))
        return {"start": np.array([s]), "end": np.array([e]), "rows": np.array([len(idx)])}


def connect(address: str | None):
    """Join the Ray cluster at ``address``, or start a local one (reuses an initialised one)."""
    require("ray", "embedding on a Ray cluster (--ray)")
    import ray

    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'}: {e}") from None
    return ray


def ray_runner(address: str | None = None, actors: int | None = None):
    """A ``runner`` for :func:`hashindex.embedding.run.embed` that embeds on a Ray cluster.

    Args:
        address: a running cluster's address (``auto``, ``ray://host:10001``, ``host:6379``);
            None starts a local cluster, or uses the one this process already joined.
        actors: backbone actors [default: one per GPU of the cluster, else one CPU actor].

    Raises:
        InputError: Ray is not installed.
    """
    require("ray", "embedding on a Ray cluster (--ray)")

    def run(
        source: ImageSource, backbone, config: EmbedConfig, writer: EmbeddingsWriter, s0: int, progress: bool, tqdm
    ) -> Path:
        spec = backbone.spec
        n, start = len(source), writer.items_done
        t0 = time.perf_counter()
        seconds = float(writer.attr("embed_seconds", 0.0))
        done = finished_blocks(writer.work, start, n)
        todo = pending_blocks(start, n, done, config.batch_size)
        label = "cpu"
        if todo:
            ray = connect(address)
            gpus = int(ray.cluster_resources().get("GPU", 0))
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            pool = actors or max(1, gpus)
            if pool < 1:
                raise InputError(f"--ray-actors must be >= 1, got {pool}")
            label = "cuda" if gpus else "cpu"
            logger.info(
                "embedding %d blocks on Ray (%d actors, %s; %d blocks already done)", len(todo), pool, label, len(done)
            )
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            cfg = asdict(config)
            ds = ray.data.from_items([{"start": s, "end": e} for s, e in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(
                _decode,
                batch_size=1,
                num_cpus=1,
                fn_kwargs={
                    "source_ref": ray.put(source),
                    "size": s0,
                    "interpolation": spec.interpolation,
                    "draft": config.jpeg_draft,
                },
            )
            # CPU actors share the cores: each gets its slice as torch or ONNX Runtime threads
            # (Ray's CPU count is a scheduling hint, not a limit).
            threads = None if gpus else max(1, cpus // pool)
            ds = ds.map_batches(
                _EmbedActor,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=pool),
                # Fractional CPUs: the pool never starves the decode tasks (and differing
                # resources keep Ray from fusing decoding into the actors).
                num_gpus=1 if gpus else 0,
                num_cpus=0.5,
                fn_constructor_kwargs={
                    "config": cfg,
                    "spec": spec.to_dict(),
                    "work": str(writer.work),
                    "s0": s0,
                    "threads": threads,
                },
            )
            bar = tqdm(
                total=n,
                initial=n - sum(e - s for s, e in todo),
                unit="img",
                desc=f"embed {writer.path.name} (ray)",
                disable=not progress,
            )
            for row in ds.iter_rows():
                bar.update(int(row["end"]) - int(row["start"]))
            bar.close()
            done = finished_blocks(writer.work, start, n)
        _hand_to_writer(writer, source, done, start, n, embed_seconds=seconds + time.perf_counter() - t0)
        return writer.finish(device=f"ray:{label}")

    return run


def _hand_to_writer(writer: EmbeddingsWriter, source: ImageSource, done, start: int, n: int, **attrs) -> None:
    pos = start
    for s, e, p in done:
        if s != pos:
            raise InputError(
                f"the Ray pass left items {pos}..{s - 1} unembedded: re-run the same command to finish them"
            )
        with np.load(p, allow_pickle=False) as z:
            b = {k: z[k] for k in z.files}
        errors = list(zip(b["fail_index"].tolist(), b["fail_error"].tolist(), b["fail_message"].tolist()))
        views = b["views"] if writer.views else None
        append_batch(writer, source, e, b["source_index"], b["embeddings"], views, errors, **attrs)
        pos = e
    if pos != n:
        raise InputError(f"the Ray pass left items {pos}..{n - 1} unembedded: re-run the same command to finish them")
