"""CPU embedding speed: this tree against an earlier commit, and against bare forward loops.

Measured side by side in one run (alternating, so machine load hits both alike):

- Fashion-MNIST, the first N training images with 2 views at 112 px (bilinear): passes/s of
  ``hashindex embed`` here (default settings) and at ``--old`` (checked out in a temporary worktree;
  no old code is kept in this tree);
- a folder of large JPEG photos (1600x1200, made from scikit-image's sample photos) at 224 px:
  images/s of ``embed`` here (default: ONNX Runtime, JPEG draft decoding), here with torch or
  without draft decoding, and at ``--old``;
- bare loops over random tensors of the same shapes: torch's batched channels-last forward in
  ``inference_mode`` and ONNX Runtime's, the reference the issue measures against;
- how far draft decoding moves the features: cosine similarity of each photo's eval embedding
  with and without it.

Passes/s come from each file's ``embed_seconds`` (the embedding loop, without start-up).

    .venv/bin/python benchmarks/embed_speed.py --old 46b7088
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, n: int) -> Path:
    """n JPEGs of 1600x1200 (quality 90): random crops of scikit-image's sample photos, resized."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    rng = np.random.default_rng(0)
    pool = [
        getattr(data, name)()
        for name in ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry")
    ]
    for i in range(n):
        img = pool[i % len(pool)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).resize((1600, 1200), Image.BICUBIC).save(
            folder / f"{i:04d}.jpg", quality=90
        )
    return folder


def old_tree(commit: str, where: Path) -> Path:
    """The commit checked out in a temporary worktree, importable as ``hashindex`` (with its CLI)."""
    if not where.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), commit], check=True, capture_output=True
        )
    link = where / "hashindex" / "cli"
    if not link.exists():
        link.symlink_to(where / "cli")
    return where


def run_embed(pythonpath: Path | None, args: list[str], out: Path) -> dict:
    """One ``hashindex embed`` process; returns the file's embed_seconds and rows."""
    import h5py

    out.unlink(missing_ok=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)  # a killed earlier run's progress
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = "import sys, hashindex; from hashindex.cli.main import main; sys.argv[0] = 'hashindex'; print(hashindex.__file__, file=sys.stderr); main()"
    t0 = time.perf_counter()
    # cwd: the output's folder, never a source tree (``-c`` puts the cwd first on sys.path, where it
    # would shadow PYTHONPATH's tree)
    r = subprocess.run(
        [sys.executable, "-c", code, "-q", "embed", *args, str(out)],
        env=env,
        cwd=out.parent,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"embed failed ({r.returncode}): {r.stderr[-2000:]}")
    tree = str(Path(r.stderr.splitlines()[0]).parent.parent)  # which hashindex ran: proof of old vs new
    with h5py.File(out, "r") as f:
        return {
            "embed_seconds": float(f.attrs["embed_seconds"]),
            "rows": int(f["embeddings"].shape[0]),
            "views": int(f.attrs["views"]),
            "wall_seconds": wall,
            "tree": tree,
        }


BARE = r"""
import json, sys, time, numpy as np, torch
from hashindex.backbone.model import load_backbone
size, batch, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
bb = load_backbone(image_size=size, device="cpu")
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
out = {}
with torch.inference_mode():
    bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
    t = time.perf_counter()
    for _ in range(reps):
        bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
    out["torch"] = batch * reps / (time.perf_counter() - t)
from hashindex.backbone.onnx_runtime import export_onnx, load_onnx
ob = load_onnx(bb.spec) or export_onnx(bb)
xn = np.ascontiguousarray(x.numpy())
ob.features_np(xn)
t = time.perf_counter()
for _ in range(reps):
    ob.features_np(xn)
out["onnxruntime"] = batch * reps / (time.perf_counter() - t)
print(json.dumps(out))
"""


def bare(size: int, batch: int, reps: int) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", BARE, str(size), str(batch), str(reps)], check=True, capture_output=True, text=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def draft_tolerance(photos: Path, work: Path) -> dict:
    """Cosine similarity of each photo's eval embedding decoded with and without draft mode."""
    from hashindex.core.config import EmbedConfig
    from hashindex.embedding.run import embed
    from hashindex.embedding.sources import open_source
    from hashindex.store.reader import open_embeddings

    src = open_source(str(photos))
    e = {}
    for draft in (True, False):
        out = work / f"draft-{draft}.h5"
        out.unlink(missing_ok=True)
        embed(src, out, EmbedConfig(image_size=224, jpeg_draft=draft), progress=False, restart=True)
        e[draft] = open_embeddings(out).embeddings()
    a, b = e[True], e[False]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_rel_diff": float(np.abs(a - b).max() / np.abs(b).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="commit to compare against (checked out in a temporary worktree)")
    ap.add_argument("--fmnist", type=int, default=2000)
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "hashindex-embed-speed"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/embed_speed.json"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HASHINDEX_CACHE", str(work / "cache"))
    old = old_tree(a.old, work / "old")
    photos = make_photos(work / "photos", a.photos)
    fm = [
        "fashion-mnist",
        "--split",
        "train",
        "--limit",
        str(a.fmnist),
        "--views",
        "2",
        "--image-size",
        "112",
        "--interpolation",
        "bilinear",
    ]
    ph = [str(photos), "--image-size", "224"]
    cases = {
        "fmnist_old": (old, fm),
        "fmnist_new": (None, fm),
        "photos_old": (old, ph),
        "photos_new": (None, ph),
        "photos_new_torch": (None, ph + ["--runtime", "torch"]),
        "photos_new_no_draft": (None, ph + ["--no-jpeg-draft"]),
    }
    runs: dict[str, list] = {k: [] for k in cases}
    for r in range(a.repeats):
        for name, (pp, args) in cases.items():  # alternating: load hits each case alike
            runs[name].append(run_embed(pp, args, work / f"{name}.h5"))
            x = runs[name][-1]
            print(f"{name} #{r}: {x['rows'] * (1 + x['views']) / x['embed_seconds']:.1f} passes/s", flush=True)
    best = {k: max(v["rows"] * (1 + v["views"]) / v["embed_seconds"] for v in vs) for k, vs in runs.items()}
    loops = {"112": bare(112, 128, 6), "224": bare(224, 64, 4)}
    doc = {
        "command": "python benchmarks/embed_speed.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "old_commit": a.old,
        "runs": runs,
        "passes_per_second": best,
        "bare_loops_per_second": loops,
        "ratios": {
            "fmnist_new_vs_old": best["fmnist_new"] / best["fmnist_old"],
            "photos_new_vs_old": best["photos_new"] / best["photos_old"],
            "photos_new_vs_bare_torch": best["photos_new"] / loops["224"]["torch"],
            "photos_old_vs_bare_torch": best["photos_old"] / loops["224"]["torch"],
            "fmnist_new_vs_bare_torch": best["fmnist_new"] / loops["112"]["torch"],
            "fmnist_old_vs_bare_torch": best["fmnist_old"] / loops["112"]["torch"],
        },
        "draft_vs_full_decoding": draft_tolerance(photos, work),
    }
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(
        json.dumps(
            {"passes_per_second": best, "bare": loops, "ratios": doc["ratios"], "draft": doc["draft_vs_full_decoding"]},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()


def render(doc: dict) -> list[str]:
    """The BENCHMARKS.md section of an embed_speed.json."""
    p, b, r, d = doc["passes_per_second"], doc["bare_loops_per_second"], doc["ratios"], doc["draft_vs_full_decoding"]
    return [
        "### Embedding on the CPU: this tree against the previous commit and bare forward loops",
        "",
        f"Command: `{doc['command']}`; {doc['date']}, {doc['machine']}. Backbone passes per second from each",
        f"file's `embed_seconds` (best of {len(doc['runs']['fmnist_new'])} alternating runs); old = commit `{doc['old_commit']}`,",
        "checked out in a temporary worktree; bare loops = a batched channels-last forward over random tensors",
        "(torch in `inference_mode`, and ONNX Runtime), measured in the same run.",
        "",
        "| workload | old | new (default) | new, torch | new, no draft | new / old | bare torch | bare ONNX Runtime | new / bare torch |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Fashion-MNIST, 2 views, 112 px | {p['fmnist_old']:.0f} | {p['fmnist_new']:.0f} | – | – | {r['fmnist_new_vs_old']:.2f}x "
        f"| {b['112']['torch']:.0f} | {b['112']['onnxruntime']:.0f} | {r['fmnist_new_vs_bare_torch']:.2f}x |",
        f"| JPEG photos 1600x1200, 224 px | {p['photos_old']:.1f} | {p['photos_new']:.1f} | {p['photos_new_torch']:.1f} "
        f"| {p['photos_new_no_draft']:.1f} | {r['photos_new_vs_old']:.2f}x | {b['224']['torch']:.1f} | {b['224']['onnxruntime']:.1f} "
        f"| {r['photos_new_vs_bare_torch']:.2f}x (old: {r['photos_old_vs_bare_torch']:.2f}x) |",
        "",
        f"Draft decoding against full decoding, same photos (eval embeddings, ONNX Runtime): cosine similarity mean "
        f"{d['cosine_mean']:.4f}, minimum {d['cosine_min']:.4f}; largest difference {100 * d['max_rel_diff']:.1f}% of the largest feature.",
    ]
