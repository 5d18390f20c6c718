"""A folder of the user's own photos: the memory and speed of embedding it, and the time from the
folder to the first answer on the search page.

1. Peak RSS and throughput of ``hashindex embed --views 2`` at 224 px on photos of mixed sizes (up
   to 1600x1200), with the former default batch (128 images) and with the batch sized from
   ``--max-memory`` (default 2 GiB), side by side in one run, each in a fresh process (peak RSS:
   the process's and its decoding workers' high-water marks).
2. ``hashindex index FOLDER OUT --serve`` on 1,000 photos: seconds until the page's first search
   answers (the server is polled the way the page calls it: POST /search with an image).

The photos are made from scikit-image's sample pictures (astronaut, coffee, chelsea, rocket, ...):
random crops, sizes, colour shifts and JPEG qualities, so decoding and resizing cost what real
photos cost. Results: benchmarks/results/own_folder.json, and a table printed for BENCHMARKS.md.

    .venv/bin/python benchmarks/own_folder.py [--images 1500] [--index-images 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HASHINDEX = [sys.executable, "-m", "hashindex"]


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    """n JPEG photos of mixed sizes (up to 1600x1200) cut from scikit-image's sample pictures."""
    from PIL import Image, ImageEnhance
    from skimage import data

    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
        "cat",
        "colorwheel",
        "logo",
    ]
    pictures = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names if hasattr(data, name)]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = pictures[i % len(pictures)]
        w, h = int(rng.integers(320, 1601)), int(rng.integers(240, 1201))
        big = im.resize((max(w, im.width), max(h, im.height)))
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        crop = big.crop((x, y, x + w, y + h))
        crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.7, 1.3)))
        crop.save(folder / f"photo{i:05d}.jpg", quality=int(rng.integers(70, 96)))


def _proc_mb(pid: int, file: str, field: str) -> float:
    """A kB field of ``/proc/PID/FILE`` in MiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024
    except (OSError, StopIteration):
        return 0.0


def _peak_mb(pid: int) -> float:
    return _proc_mb(pid, "status", "VmHWM:")


def _pss_mb(pid: int) -> float:
    """Proportional set size: private pages plus a share of the pages shared with other processes
    (a forked worker's RSS counts the parent's libraries again; its PSS does not)."""
    return _proc_mb(pid, "smaps_rollup", "Pss:")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_measured(args: list[str], env: dict) -> dict:
    """Wall seconds and peak memory (MiB) of a command: RSS of the process and of the largest of
    its children, and the highest sample of the process's and its children's PSS summed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    main_peak, child_peak, pss_peak = 0.0, {}, 0.0
    while proc.poll() is None:
        main_peak = max(main_peak, _peak_mb(proc.pid))
        children = _children(proc.pid)
        for c in children:
            child_peak[c] = max(child_peak.get(c, 0.0), _peak_mb(c))
        pss_peak = max(pss_peak, _pss_mb(proc.pid) + sum(_pss_mb(c) for c in children))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed: {err[-2000:]}")
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": main_peak,
        "worker_peak_rss_mb": max(child_peak.values(), default=0.0),
        "peak_total_pss_mb": pss_peak,
    }


def embed_memory(photos: Path, work: Path, env: dict) -> dict:
    # The backbone's ONNX export is made once per machine: not inside either measurement.
    first = work / "warm"
    first.mkdir()
    (first / "a.jpg").write_bytes(sorted(photos.iterdir())[0].read_bytes())
    subprocess.run(
        [*HASHINDEX, "-q", "embed", str(first), str(work / "warm.h5"), "--image-size", "224"], env=env, check=True
    )
    out = {}
    for label, extra in (("batch 128 (former default)", ["--batch-size", "128"]), ("auto (--max-memory 2G)", [])):
        target = work / f"emb-{len(out)}.h5"
        args = [*HASHINDEX, "-q", "embed", str(photos), str(target), "--views", "2", "--image-size", "224", *extra]
        r = run_measured(args, env)
        n = len(list(photos.iterdir()))
        out[label] = {**r, "images": n, "images_per_s": n / r["seconds"], "command": " ".join(args[2:])}
        print(
            f"{label}: {r['seconds']:.1f}s, {n / r['seconds']:.1f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB (workers {r['worker_peak_rss_mb']:.0f} MB), "
            f"peak PSS of all {r['peak_total_pss_mb']:.0f} MB",
            flush=True,
        )
    return out


def folder_to_answer(photos: Path, work: Path, env: dict) -> dict:
    """Seconds from `hashindex index PHOTOS OUT --serve` to the page's first search answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*HASHINDEX, "-q", "index", str(photos), str(work / "out"), "--serve", "--port", str(port)]
    query = sorted(photos.iterdir())[0].read_bytes()
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        + query
        + b"\r\n--XX--\r\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answered = None
    try:
        while proc.poll() is None and time.perf_counter() - t0 < 1800:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/search",
                    data=body,
                    headers={"Content-Type": "multipart/form-data; boundary=XX"},
                )
                with urllib.request.urlopen(req, timeout=60) as r:
                    if r.status == 200 and json.loads(r.read())["results"]:
                        answered = time.perf_counter() - t0
                        break
            except OSError:
                time.sleep(0.5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    if answered is None:
        raise RuntimeError(f"no answer: {err[-2000:]}")
    info = json.loads(
        subprocess.run(
            [*HASHINDEX, "info", str(work / "out"), "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    print(
        f"folder of {len(list(photos.iterdir()))} photos to the first answer: {answered:.1f}s ({info['kind']} index, {info['bits']} bits)",
        flush=True,
    )
    return {
        "seconds": answered,
        "images": len(list(photos.iterdir())),
        "kind": info["kind"],
        "command": " ".join(args[2:5]) + " --serve",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1500, help="photos for the memory comparison")
    ap.add_argument("--index-images", type=int, default=1000, help="photos for the folder-to-answer time")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "own_folder.json"))
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    env = dict(
        os.environ,
        HASHINDEX_CACHE=os.environ.get("HASHINDEX_CACHE", str(Path(tempfile.gettempdir()) / "hashindex-bench-cache")),
    )
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_memory:
            make_photos(work / "mixed", args.images)
            results["embed_memory"] = embed_memory(work / "mixed", work, env)
        make_photos(work / "own", args.index_images, seed=1)
        results["folder_to_answer"] = folder_to_answer(work / "own", work, env)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
