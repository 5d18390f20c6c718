"""The near-duplicate benchmark's collection (see ``dedup.py``): Fashion-MNIST originals made
mutually distinct, their edited copies and distractors, written as files and embedded; the truth
from the file names; the probe and index of a code length."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

EDITS = ("crop", "rescale", "jpeg", "bright", "rotate", "mirror")


def upscale(pixels: np.ndarray, px: int):
    from PIL import Image

    return Image.fromarray(pixels, "L").resize((px, px), Image.BILINEAR)


def apply_edit(img, edit: str, rng: np.random.Generator):
    """The edited copy of ``img`` (a PIL grayscale image) and the parameters drawn."""
    from PIL import Image, ImageEnhance, ImageOps

    w, h = img.size
    if edit == "crop":
        area = float(rng.uniform(0.80, 0.90))
        side = int(round(math.sqrt(area) * w))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        return img.crop((x, y, x + side, y + side)), {"area": round(area, 3), "x": x, "y": y}
    if edit == "rescale":
        f = float(rng.uniform(0.30, 0.50))
        small = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BOX)
        return small.resize((w, h), Image.BILINEAR), {"factor": round(f, 3)}
    if edit == "jpeg":
        return img, {"quality": int(rng.integers(10, 26))}
    if edit == "bright":

        def factor():
            return float(rng.choice([-1, 1]) * rng.uniform(0.10, 0.25) + 1)

        b, c = factor(), factor()
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c), {
            "brightness": round(b, 3),
            "contrast": round(c, 3),
        }
    if edit == "rotate":
        a = float(rng.choice([-1, 1]) * rng.uniform(4, 10))
        return img.rotate(a, resample=Image.BILINEAR, fillcolor=0), {"degrees": round(a, 2)}
    if edit == "mirror":
        return ImageOps.mirror(img), {}
    raise ValueError(edit)


def save(img, path: Path, quality: int | None = None) -> None:
    if quality is None:
        img.save(path, format="PNG")
    else:
        img.save(path, format="JPEG", quality=quality)


def embed_folder(folder: Path, out: Path, args, views: int = 0) -> Path:
    import hashindex

    if not out.exists():
        tmp = out.with_suffix(".part.h5")
        hashindex.embed(
            str(folder),
            tmp,
            image_size=args.image_size,
            interpolation="bilinear",
            views=views,
            seed=args.seed,
            restart=True,
        )
        os.replace(tmp, out)
    return out


def unit_rows(path: Path) -> np.ndarray:
    from hashindex.store.reader import open_embeddings

    e = open_embeddings(path)
    x, names = e.embeddings(), e.names()
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x, names


def make_collection(args, work: Path, log) -> dict:
    """Write the collection folder (see the module docstring); returns its description."""
    from hashindex.embedding.sources import open_source

    tag = f"n{args.originals}_d{args.distractors}_s{args.seed}_px{args.px}_is{args.image_size}_dc{args.distinct_cosine}"
    base = work / f"collection_{tag}"
    folder, meta_path = base / "images", base / "collection.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    t0 = time.perf_counter()
    src = open_source("fashion-mnist", split="test")
    pixels = src._pixels
    rng = np.random.default_rng(args.seed)
    want = args.originals + args.distractors
    draw = rng.permutation(len(pixels))[: min(len(pixels), int(want * 1.3) + 200)]
    # exact pixel repeats
    seen, pool = set(), []
    for i in draw:
        h = hashlib.sha256(pixels[i].tobytes()).digest()
        if h not in seen:
            seen.add(h)
            pool.append(int(i))
    exact_repeats = len(draw) - len(pool)
    pool_dir = base / "pool"
    pool_dir.mkdir()
    for i in pool:
        save(upscale(pixels[i], args.px), pool_dir / f"p{i:05d}.png")
    x, names = unit_rows(embed_folder(pool_dir, base / "pool.h5", args))
    by_name = {int(n[1:6]): r for r, n in enumerate(names)}
    xs = x[[by_name[i] for i in pool]]
    kept_rows, nearest_dropped = [], []
    for r in range(len(pool)):
        if kept_rows:
            c = float((xs[kept_rows] @ xs[r]).max())
            if c >= args.distinct_cosine:
                nearest_dropped.append(c)
                continue
        kept_rows.append(r)
        if len(kept_rows) == want:
            break
    if len(kept_rows) < want:
        raise SystemExit(f"only {len(kept_rows)} mutually distinct images in the pool; ask for fewer")
    kept = [pool[r] for r in kept_rows]
    kx = xs[kept_rows]
    sims = kx @ kx.T
    np.fill_diagonal(sims, -1)
    nn = sims.max(1)
    originals, distractors = kept[: args.originals], kept[args.originals :]
    folder.mkdir()
    params = {}
    erng = np.random.default_rng(args.seed + 1000)
    for i in originals:
        img = upscale(pixels[i], args.px)
        save(img, folder / f"o{i:05d}_original.png")
        for e in EDITS:
            out, p = apply_edit(img, e, erng)
            q = p.get("quality")
            save(out, folder / f"o{i:05d}_{e}.{'jpg' if q else 'png'}", q)
            params[f"o{i:05d}_{e}"] = p
    for i in distractors:
        save(upscale(pixels[i], args.px), folder / f"d{i:05d}.png")
    shutil.rmtree(pool_dir)
    meta = {
        "folder": str(folder),
        "originals": originals,
        "distractors": distractors,
        "items": len(originals) * (1 + len(EDITS)) + len(distractors),
        "pool_drawn": len(draw),
        "exact_pixel_repeats_dropped": exact_repeats,
        "near_identical_dropped": len(nearest_dropped),
        "distinct_cosine": args.distinct_cosine,
        "kept_nearest_cosine": {
            "max": round(float(nn.max()), 4),
            "p99": round(float(np.quantile(nn, 0.99)), 4),
            "median": round(float(np.median(nn)), 4),
        },
        "edit_params": params,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta))
    log(
        f"collection: {meta['items']} images in {folder} ({exact_repeats} exact repeats and "
        f"{len(nearest_dropped)} near-identical images dropped from the pool), {meta['seconds']} s"
    )
    return meta


def truth_of(names: list[str]):
    """Per item: its original (test index, -1 for distractors) and its edit ("original", an
    edit, or "distractor"), from the file names."""
    orig = np.full(len(names), -1, np.int64)
    edit = np.empty(len(names), object)
    for r, n in enumerate(names):
        stem = Path(n).stem
        if stem.startswith("o"):
            k, e = stem[1:].split("_", 1)
            orig[r], edit[r] = int(k), e
        else:
            edit[r] = "distractor"
    return orig, edit


# -- probe and index -------------------------------------------------------------------------


def probe_and_index(args, work: Path, coll_h5: Path, bits: int, log):
    import hashindex

    tag = f"p{args.probe_train}_v{args.views}_is{args.image_size}_s{args.seed}"
    train_h5 = work / f"probe_train_{tag}.h5"
    if not train_h5.exists():
        t0 = time.perf_counter()
        tmp = train_h5.with_suffix(".part.h5")
        hashindex.embed(
            "fashion-mnist",
            tmp,
            split="train",
            limit=args.probe_train,
            image_size=args.image_size,
            interpolation="bilinear",
            views=args.views,
            seed=args.seed,
            restart=True,
        )
        os.replace(tmp, train_h5)
        log(
            f"probe training set: {args.probe_train} train images, {args.views} views, {time.perf_counter() - t0:.0f} s"
        )
    sup = "sup" if args.supervised else "unsup"
    probe_dir = work / f"probe_{tag}_b{bits}_{sup}"
    fit_s = None
    if not probe_dir.exists():
        t0 = time.perf_counter()
        hashindex.fit_probe(train_h5, probe_dir, bits=bits, supervised=args.supervised, seed=args.seed)
        fit_s = round(time.perf_counter() - t0, 1)
        log(f"probe: CroVCA {bits} bits {sup}, fitted in {fit_s} s")
    index_dir = work / f"index_{coll_h5.stem}_{probe_dir.name}"
    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    ix = hashindex.build_index(coll_h5, probe_dir, index_dir)
    return ix, {
        "train_h5": str(train_h5),
        "probe": str(probe_dir),
        "index": str(index_dir),
        "fit_seconds": fit_s,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "kind": ix.kind,
    }
