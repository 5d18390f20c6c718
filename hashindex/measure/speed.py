"""Pipeline speed of the bench report: hashindex's own embed, fit and query paths, each side by
side with a bare reference measured in the same run, on the same device, on the same work.

- embed: :func:`hashindex.embedding.run.embed` of the bench images (the database's backbone and number of
  views) against a bare batched forward of the same backbone over random tensors of the same
  shape (channels-last, ``inference_mode``, bf16 autocast on CUDA as the backbone runs, the same
  batch size and number of passes);
- fit: :func:`hashindex.probe.fit.fit_probe` (CroVCA) on the database embeddings against a plain
  PyTorch loop over the same arrays: the same HashCoder, AdamW, batch size, epochs (so steps) and
  loss (:func:`hashindex.probe.losses.crovca_loss`), the data on the device, no host
  synchronisation per step;
- query: the wall time of one ``hashindex query`` process (a fresh interpreter: cold) with
  ``--embeddings`` and with one image file, against a process that only imports the libraries
  that kind of query cannot do without today (the floor of its start-up).

Each ratio is the reference's time over hashindex's for the same work: 1.0 means hashindex runs
at the bare loop's pace, 0.5 at half of it. Nothing here is asserted on; the report prints it.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hashindex.backbone.frozen import Backbone, resolve_device
from hashindex.backbone.memory import auto_batch
from hashindex.backbone.model import load_backbone, spec_load_options
from hashindex.core.config import BenchConfig, EmbedConfig, FitConfig
from hashindex.core.errors import HashIndexError
from hashindex.core.spec import check_same_backbone
from hashindex.probe.artifact import Probe
from hashindex.store.reader import Embeddings, open_embeddings

logger = logging.getLogger(__name__)

# What a query process of each kind must import at the least (on the CPU an image query runs the
# backbone's ONNX export, no torch): the reference of its wall time.
QUERY_FLOORS = {"embeddings": "import numpy, h5py, faiss", "image": "import numpy, h5py, faiss, PIL.Image, onnxruntime"}


def device_name(dev: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU with torch's thread count."""
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (cuda)"
    return f"cpu, {torch.get_num_threads()} torch threads"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reference_forward(backbone: Backbone, passes: int, batch_size: int) -> float:
    """Seconds of a bare batched forward of ``passes`` random images through the backbone's
    model, after one warm-up batch."""
    dev, net, s = backbone.device, backbone.model, backbone.spec.image_size
    x = torch.randn(batch_size, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)

    def run(xb: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            return net.forward_head(net.forward_features(xb), pre_logits=True)

    run(x)
    _sync(dev)
    t = time.perf_counter()
    for start in range(0, passes, batch_size):
        run(x[: min(batch_size, passes - start)])
    _sync(dev)
    return time.perf_counter() - t


def reference_fit(views: np.ndarray, cfg: FitConfig, epochs: int) -> float:
    """Seconds of a plain CroVCA training loop over ``views`` ``(n, V, D)`` (V >= 2): ``epochs``
    passes over a permutation in batches of ``cfg.batch_size`` (as ``fit_probe`` steps), two
    distinct views per sample drawn on the device, AdamW; from the host array to the trained model."""
    from hashindex.probe.hashcoder import HashCoder
    from hashindex.probe.losses import crovca_loss

    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    n, v, d = views.shape
    model = HashCoder(d, cfg.bits, cfg.hashcoder).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    _sync(dev)
    t = time.perf_counter()
    data = torch.from_numpy(views).to(dev)
    for _ in range(epochs):
        perm = torch.randperm(n, device=dev)
        for s in range(0, n - 1, cfg.batch_size):  # a last batch of one sample is skipped, as in fit_probe
            i = perm[s : s + cfg.batch_size]
            a = torch.randint(0, v, (len(i),), device=dev)
            b = (a + torch.randint(1, v, (len(i),), device=dev)) % v
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                z = model(torch.cat([data[i, a], data[i, b]]))
            z1, z2 = z.float().chunk(2)
            loss = crovca_loss(z1, z2, None, cfg.eps, cfg.rate_weight)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(dev)
    return time.perf_counter() - t


def measure_embed(db: Embeddings, config: BenchConfig, workdir: Path) -> tuple[dict, Path]:
    """Embed passes/s of hashindex and of the bare forward on the first ``images_limit`` images
    of ``config.images``; returns the figures and a PNG of one of the images (for the query).

    Raises:
        InputError: a bad source, or a database backbone that cannot be re-created.
        MismatchError: the images' embeddings do not come out with the database's backbone spec.
    """
    from PIL import Image

    from hashindex.embedding.run import decode_workers, embed
    from hashindex.embedding.sources import open_source

    source = open_source(config.images, limit=config.images_limit)
    opts = spec_load_options(db.backbone)
    cfg = EmbedConfig(**opts, views=db.num_views, device=config.device, seed=config.seed, max_failures=0.1)
    backbone = load_backbone(**opts, device=config.device)
    # Both sides with the batch embed sizes itself within its memory budget.
    workers = decode_workers(source, cfg)
    cfg = replace(cfg, batch_size=auto_batch(backbone.spec.image_size, 1 + cfg.views, cfg.max_memory, workers=workers))
    ref_passes = len(source) * (1 + cfg.views)
    logger.info("pipeline speed: bare forward of %d passes", ref_passes)
    ref_s = reference_forward(backbone, ref_passes, cfg.batch_size)  # first: it also warms the device up
    del backbone
    path = workdir / "bench-images.h5"
    logger.info("pipeline speed: hashindex embed of %d images", len(source))
    t = time.perf_counter()
    embed(source, path, cfg, progress=False)
    wall = time.perf_counter() - t
    emb = open_embeddings(path)
    check_same_backbone(
        db.backbone, emb.backbone, f"the database embeddings {db.path}", f"the bench images {config.images}"
    )
    passes = emb.n * (1 + cfg.views)
    seconds = float(emb.attrs["embed_seconds"])
    image = workdir / "query.png"
    Image.fromarray(source.load(int(emb.source_index()[0]))).save(image)
    figures = {
        "source": config.images,
        "images": emb.n,
        "views": cfg.views,
        "image_size": emb.backbone.image_size,
        "batch_size": cfg.batch_size,
        "model": emb.backbone.model,
        "hashindex": {"passes": passes, "seconds": seconds, "wall_seconds": wall, "passes_per_s": passes / seconds},
        "reference": {"passes": ref_passes, "seconds": ref_s, "passes_per_s": ref_passes / ref_s},
    }
    figures["ratio"] = figures["hashindex"]["passes_per_s"] / figures["reference"]["passes_per_s"]
    return figures, image


def measure_fit(db: Embeddings, config: BenchConfig) -> tuple[dict, Probe]:
    """Seconds of ``fit_probe`` (CroVCA, 64 bits or the longest code of the bench) and of the bare
    loop for as many epochs on the same arrays (the sampled rows: eval embedding + cached views);
    returns the figures and the fitted probe."""
    from hashindex.probe.fit import fit_probe
    from hashindex.probe.sampling import read_rows, sample_rows

    bits = 64 if 64 in config.bits else max(config.bits)
    cfg = FitConfig(
        method="crovca",
        bits=bits,
        hashcoder=config.hashcoder,
        epochs=config.epochs,
        device=config.device,
        seed=config.seed,
    )
    logger.info("pipeline speed: hashindex fit-probe, CroVCA %d bits", bits)
    t = time.perf_counter()
    probe = fit_probe(db, cfg, progress=False)
    seconds = time.perf_counter() - t
    epochs, steps = int(probe.meta["schedule"]["epochs"]), int(probe.meta["schedule"]["steps"])
    rows = sample_rows(db.n, cfg.sample, cfg.seed)
    x = read_rows(db, rows)
    # The eval embedding is one of the views (FitConfig.eval_view); without cached views it is
    # paired with itself (fit_probe then adds feature-space noise, which the bare loop leaves out).
    views = np.stack(
        [x] + [read_rows(db, rows, view=v) for v in range(db.num_views)] if db.num_views else [x, x], axis=1
    )
    logger.info("pipeline speed: bare training loop of %d steps", steps)
    ref_s = reference_fit(views, cfg, epochs)
    figures = {
        "method": "crovca",
        "bits": bits,
        "rows": len(x),
        "views": views.shape[1],
        "epochs": epochs,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "hashindex": {"seconds": seconds},
        "reference": {"seconds": ref_s},
        "ratio": ref_s / seconds,
    }
    return figures, probe


def wall_seconds(args: list[str]) -> float:
    """Wall time of one process from start to exit.

    Raises:
        HashIndexError: the process failed (its last lines of stderr in the message).
    """
    t = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        tail = " / ".join(r.stderr.strip().splitlines()[-3:])
        raise HashIndexError(f"the timed command `{shlex.join(args)}` failed with exit code {r.returncode}: {tail}")
    return wall


def measure_query(probe: Probe, db: Embeddings, q: Embeddings, image: Path | None, workdir: Path) -> dict:
    """Wall time of one cold ``hashindex query`` process with ``--embeddings q --limit 1`` and
    (when ``image`` is given) with that image, on a flat index of the database built with
    ``probe``; each beside a process that only imports that kind of query's libraries."""
    from hashindex.api.index import build_index

    probe.save(workdir / "probe")
    build_index(db, workdir / "probe", workdir / "index", kind="flat", verify=False)
    cmd = [sys.executable, "-m", "hashindex", "-q", "query", str(workdir / "index")]
    runs = {
        "embeddings": cmd + ["--embeddings", str(q.path), "--limit", "1"],
        "image": None if image is None else cmd + [str(image)],
    }
    out: dict = {"index_items": db.n, "bits": probe.bits}
    for kind, args in runs.items():
        if args is None:
            out[kind] = None
            continue
        logger.info("pipeline speed: one %s query process", kind)
        seconds = wall_seconds(args)
        ref_s = wall_seconds([sys.executable, "-c", QUERY_FLOORS[kind]])
        out[kind] = {
            "seconds": seconds,
            "reference": f"python -c '{QUERY_FLOORS[kind]}'",
            "reference_seconds": ref_s,
            "ratio": ref_s / seconds,
        }
    return out


def measure_pipeline(db: Embeddings, q: Embeddings, config: BenchConfig, workdir: str | Path) -> dict:
    """The pipeline-speed section of a bench report (``embed`` is None without ``config.images``,
    and so is the image query, which needs one of its images).

    Raises:
        InputError, MismatchError: see :func:`measure_embed`.
        HashIndexError: a timed query process failed.
    """
    workdir = Path(workdir)
    dev = resolve_device(config.device)
    out: dict = {"device": dev.type, "device_name": device_name(dev), "embed": None}
    image = None
    if config.images:
        out["embed"], image = measure_embed(db, config, workdir)
    out["fit"], probe = measure_fit(db, config)
    out["query"] = measure_query(probe, db, q, image, workdir)
    return out
