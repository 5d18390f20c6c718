"""Ray embed against single-process embed on the same images, side by side in one run.

Fashion-MNIST train images at 112 px (bilinear), EfficientNet-Lite0, no views; a local Ray
cluster with ``--cpus`` CPUs and ``--actors`` CPU actors. The two runs alternate (single, Ray,
Ray, single) so a change in the machine's load falls on both; images/s counts the whole
``embed`` call (backbone loading, the pass, assembling and publishing the file). Also checks
that the two files agree (max absolute difference of the embeddings).

    python benchmarks/ray_embed.py --work /work/runs/i12/ray --images 600 --out benchmarks/results/ray_embed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import ray

from hashindex.core.config import EmbedConfig
from hashindex.embedding.ray_runner import ray_runner
from hashindex.embedding.run import embed
from hashindex.embedding.sources import open_source
from hashindex.store.reader import open_embeddings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for attempt in range(3):  # Ray gives its raylet a fixed 30 s to register: retry on a loaded machine
        try:
            ray.init(
                num_cpus=args.cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    src = open_source("fashion-mnist", split="train", limit=args.images)
    cfg = EmbedConfig(image_size=112, interpolation="bilinear")
    runs = []
    for i, mode in enumerate(("single", "ray", "ray", "single")):
        t0 = time.perf_counter()
        embed(
            src,
            work / f"{mode}-{i}.h5",
            cfg,
            progress=False,
            runner=ray_runner(actors=args.actors) if mode == "ray" else None,
        )
        s = time.perf_counter() - t0
        runs.append({"mode": mode, "seconds": round(s, 2), "images_per_second": round(args.images / s, 2)})
        print(json.dumps(runs[-1]), flush=True)
    ips = {m: float(np.mean([r["images_per_second"] for r in runs if r["mode"] == m])) for m in ("single", "ray")}
    a, b = open_embeddings(work / "single-0.h5"), open_embeddings(work / "ray-1.h5")
    doc = {
        "benchmark": "ray_embed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "images": args.images,
        "image_size": 112,
        "ray_cpus": args.cpus,
        "ray_actors": args.actors,
        "runs": runs,
        "single_images_per_second": round(ips["single"], 2),
        "ray_images_per_second": round(ips["ray"], 2),
        "ratio": round(ips["ray"] / ips["single"], 3),
        "target_ratio": 0.8,
        "met": ips["ray"] >= 0.8 * ips["single"],
        "max_abs_difference": float(np.abs(a.embeddings() - b.embeddings()).max()),
        "ray_version": ray.__version__,
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
