"""Near-duplicate detection: hashindex dedup against 64-bit pHash and exact float cosine, on
Fashion-MNIST originals with edited copies and distractors; and the speed of the range self-join
on millions of synthetic codes.

Collection (``--originals N``, ``--distractors D``, ``--seed``): images of the Fashion-MNIST test
split upscaled from 28 px to ``--px`` (bilinear), written as PNG. A candidate pool drawn from the
split is made mutually distinct first: exact pixel repeats are dropped, then (greedily, in draw
order) every image whose float embedding has cosine >= ``--distinct-cosine`` with an image
already kept (Fashion-MNIST holds repeats and near-repeats of the same product photo, which
would be true near-duplicates that the truth does not know). The first N kept images are the
originals, the next D the distractors (no copies). Each original gets one copy per edit:

    crop        a random square crop of 80-90 % of the area (left at its size)
    rescale     down to 30-50 % of the side (box), back up (bilinear)
    jpeg        JPEG at quality 10-25
    bright      brightness and contrast each scaled by 0.75-0.9 or 1.1-1.25
    rotate      4-10 degrees either way, black corners (the background)
    mirror      horizontal flip

File names encode the truth: ``o{test index}_{edit}.png|jpg`` and ``d{test index}.png``. A true
pair is two items of the same original (original-copy or copy-copy).

Embedding: the default backbone (packaged offline weights; ONNX Runtime on the CPU) at
``--image-size`` with bilinear interpolation, no views for the collection. Probe: CroVCA,
unsupervised, ``--bits`` (default 64), fitted on ``--probe-train`` images of the Fashion-MNIST
*training* split (disjoint from the collection) embedded with ``--views`` augmented views: the
views teach the codes invariance to crops, flips and colour changes (what edited copies differ
by) and the probe does not see the collection, as one fitted once and used on new images
would not. Unsupervised: class targets pull every item of a class to one code, so the Hamming
radius would stop separating different pictures of one class (``--supervised`` to compare).

Methods, side by side, each scored on the pairs it reports (precision, recall, recall of the
original-copy pair per edit, recall of copy-copy pairs), and on the pairs its groups imply after
the library's leader grouping (hashindex.dedup.find.leader_groups, what ``hashindex dedup``
outputs: two items in one group):

    hashindex   candidates within radius_bits of each other (the exact range self-join,
                hashindex.dedup.find.candidate_pairs), confirmed by float cosine >= min_cosine
                (hashindex.dedup.find.cosines) or pixel agreement >= min_pixels (the correlation
                of 16x16 grayscale thumbnails, either mirrored: hashindex.dedup.pixels); grid
                radius_bits x min_cosine x min_pixels ("none": Hamming only; None: cosine only)
    phash       imagehash.phash(hash_size=8) of the files, pairs within a Hamming threshold
    float       exact cosine of the same embeddings, pairs at or above a threshold
    float_pixels  every pair with float cosine >= --cos-low, confirmed as hashindex confirms
                (cosine or pixels) but without the codes: what the pixel confirmation adds alone

For each method: the best recall at precision >= ``--min-precision`` and the setting reaching it.
The setting ``--check-radius`` x ``--check-cosine`` (the library's defaults) is re-run through the
public API (``Index.duplicates``) and its groups must be those computed here.

Speed (``--scales``, ``--speed-radii``): synthetic clustered 64-bit codes
(hashindex.measure.synthetic: 4,096 centres, each bit flipped with probability 1/8) with planted
near-duplicates (``--plant`` of the rows are copies of other rows with 1..radius bits flipped),
then dedup without floats: the multi-index tables for the radius, the range self-join in chunks,
leader grouping; every planted pair must be found, and on a ``--check-sample`` of rows (planted
pairs and random rows) the pairs must equal a brute-force NumPy popcount over all pairs of the
sample. ``--max-join-seconds`` stops a join early (rows are in random order: the whole join's
time and pairs are extrapolated from the rows done, and marked so).

Defaults (``--summarize``): ``min_cosine`` is the smallest float threshold reaching the precision
on pairs and on groups in every quality run given; ``min_pixels`` the smallest pixel threshold at
which float_pixels with that cosine still reaches it in every run; the radius the smallest
fraction of the code length at which hashindex keeps ``--min-ratio`` of float_pixels' recall at
those thresholds in every run (over every code length, and for each code length alone).

    python benchmarks/dedup.py --work /tmp/dedup --out benchmarks/results/dedup_fmnist_seed0.json
    python benchmarks/dedup.py --work /tmp/dedup --seed 1 --scales '' --out .../dedup_fmnist_seed1.json
    python benchmarks/dedup.py --work /tmp/dedup --bits 32,128 --scales '' --out .../dedup_fmnist_bits32_128.json
    python benchmarks/dedup.py --work /tmp/dedup --skip-quality --scales 10000000 \
        --speed-radii 0.0625,0.125,0.15625,0.1875 --max-join-seconds 240 --out .../dedup_speed_10m.json
    python benchmarks/dedup.py --summarize benchmarks/results/dedup_fmnist_*.json --min-ratio 0.95 \
        --out benchmarks/results/dedup_summary.json
    python benchmarks/dedup.py --table benchmarks/results/dedup_speed_10m.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

EDITS = ("crop", "rescale", "jpeg", "bright", "rotate", "mirror")


# -- collection ------------------------------------------------------------------------------


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


# -- scoring ---------------------------------------------------------------------------------


class Truth:
    def __init__(self, orig: np.ndarray, edit: np.ndarray):
        self.orig, self.edit, self.n = orig, edit, len(orig)
        ks = orig[orig >= 0]
        _, counts = np.unique(ks, return_counts=True)
        self.total = int((counts * (counts - 1) // 2).sum())
        self.originals = len(counts)
        self.copy_pairs = int(((counts - 1) * (counts - 2) // 2).sum())
        # the row of each original and of each of its copies, aligned by original
        order = np.unique(ks)
        self.row_of = {}
        for e in ("original", *EDITS):
            rows = np.flatnonzero(edit == e)
            rows = rows[np.argsort(orig[rows])]
            assert np.array_equal(orig[rows], order), f"missing {e} copies"
            self.row_of[e] = rows

    def score_pairs(self, i: np.ndarray, j: np.ndarray, detail: bool = True) -> dict:
        same = (self.orig[i] == self.orig[j]) & (self.orig[i] >= 0)
        tp = int(same.sum())
        out = {
            "pairs": len(i),
            "true_pairs": tp,
            "precision": round(tp / len(i), 5) if len(i) else 1.0,
            "recall": round(tp / self.total, 5),
        }
        if detail:
            ei, ej = self.edit[i[same]], self.edit[j[same]]
            per = {}
            for e in EDITS:
                hit = ((ei == "original") & (ej == e)) | ((ej == "original") & (ei == e))
                per[e] = round(int(hit.sum()) / self.originals, 4)
            cc = (ei != "original") & (ej != "original")
            per["copy-copy"] = round(int(cc.sum()) / self.copy_pairs, 4)
            out["recall_by_edit"] = per
        return out

    def score_groups(self, groups: list[np.ndarray], detail: bool = True) -> dict:
        """Scores of the pairs the groups imply (two items in one group)."""
        gid = np.full(self.n, -1, np.int64)
        sizes = np.array([len(g) for g in groups], np.int64)
        if len(groups):
            gid[np.concatenate(groups)] = np.repeat(np.arange(len(groups)), sizes)
        pairs = int((sizes * (sizes - 1) // 2).sum())
        m = (gid >= 0) & (self.orig >= 0)
        key = gid[m] * (1 << 32) + self.orig[m]
        _, c = np.unique(key, return_counts=True)
        tp = int((c * (c - 1) // 2).sum())
        out = {
            "groups": len(groups),
            "pairs": pairs,
            "true_pairs": tp,
            "precision": round(tp / pairs, 5) if pairs else 1.0,
            "recall": round(tp / self.total, 5),
        }
        if detail:
            o = self.row_of["original"]
            per = {}
            for e in EDITS:
                r = self.row_of[e]
                per[e] = round(float(((gid[o] >= 0) & (gid[o] == gid[r])).mean()), 4)
            out["recall_by_edit"] = per
        return out


def sweep(truth: Truth, i, j, score, thresholds, *, higher: bool, n: int) -> list[dict]:
    """Pair and group scores at each threshold (pairs kept: score >= t when ``higher``, else <= t)."""
    from hashindex.dedup.find import leader_groups

    rows = []
    for t in thresholds:
        ok = score >= t if higher else score <= t
        a, b = i[ok], j[ok]
        rows.append(
            {
                "threshold": t,
                "pair": truth.score_pairs(a, b),
                "group": truth.score_groups(leader_groups(n, a, b)),
            }
        )
    return rows


def scored(truth: Truth, n: int, a, b, threshold, group_floor: float) -> dict:
    """Pair scores of a setting, and its groups' when the pairs' precision reaches ``group_floor``
    (grouping is the slow part of a sweep; settings far below the target precision skip it)."""
    from hashindex.dedup.find import leader_groups

    pair = truth.score_pairs(a, b)
    group = truth.score_groups(leader_groups(n, a, b)) if pair["precision"] >= group_floor else None
    return {"threshold": threshold, "pair": pair, "group": group}


def best(rows: list[dict], min_precision: float, level: str, key=lambda r: r["threshold"]) -> dict | None:
    ok = [r for r in rows if r[level] is not None and r[level]["precision"] >= min_precision]
    if not ok:
        return None
    r = max(ok, key=lambda r: (r[level]["recall"], r[level]["precision"]))
    return {"setting": key(r), **r[level]}


def phash_codes(folder: Path, names: list[str]) -> np.ndarray:
    import imagehash
    from PIL import Image

    out = np.empty((len(names), 8), np.uint8)
    for r, n in enumerate(names):
        with Image.open(folder / n) as im:
            h = imagehash.phash(im, hash_size=8)
        out[r] = np.packbits(h.hash.reshape(-1))
    return out


def brute_pairs(codes: np.ndarray, radius: int, chunk: int = 2048):
    """Every pair i < j within ``radius``: NumPy XOR and popcount over all pairs (the reference)."""
    nb = codes.shape[1]
    word = next(t for t in (np.uint64, np.uint32, np.uint16, np.uint8) if nb % np.dtype(t).itemsize == 0)
    w = np.ascontiguousarray(codes).view(word)
    parts = []
    for s in range(0, len(codes), chunk):
        a = w[s : s + chunk]
        d = np.bitwise_count(a[:, None, :] ^ w[None, :, :]).sum(-1)
        ii, jj = np.nonzero(d <= radius)
        ii += s
        keep = jj > ii
        parts.append((ii[keep], jj[keep], d[ii[keep] - s, jj[keep]]))
    i, j, d = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order].astype(np.int32)


def pixel_vectors(folder: Path, names: list[str]):
    """Unit thumbnail vectors (as they are, mirrored) of the files, read as the library reads them."""
    from hashindex.dedup.pixels import DRAFT, thumbnail, unit_vectors
    from hashindex.embedding.decode import decode_image

    return unit_vectors(np.stack([thumbnail(decode_image(str(folder / n), DRAFT)) for n in names]))


def pixel_pairs(vectors, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from hashindex.dedup.pixels import agreement

    plain, mirror = vectors
    return agreement(plain, plain, mirror, i, j)


def either(cos, pix, c, p):
    """Pairs confirmed by cosine >= c or pixels >= p (p None: cosine only; c "none": every pair)."""
    if c == "none":
        return np.ones(len(cos), bool)
    ok = cos >= c
    return ok if p is None else ok | (pix >= p)


def cosine_pairs(x: np.ndarray, low: float, chunk: int = 1024):
    parts = []
    for s in range(0, len(x), chunk):
        c = x[s : s + chunk] @ x.T
        ii, jj = np.nonzero(c >= low)
        ii += s
        keep = jj > ii
        parts.append((ii[keep], jj[keep], c[ii[keep] - s, jj[keep]]))
    return tuple(np.concatenate(p) for p in zip(*parts))


def quality(args, work: Path, log) -> dict:
    from hashindex.core.config import DedupConfig
    from hashindex.dedup.find import candidate_pairs, cosines, leader_groups

    coll = make_collection(args, work, log)
    folder = Path(coll["folder"])
    t0 = time.perf_counter()
    coll_h5 = embed_folder(folder, folder.parent / "collection.h5", args)
    embed_s = round(time.perf_counter() - t0, 1)
    x, names = unit_rows(coll_h5)
    orig, edit = truth_of(names)
    truth = Truth(orig, edit)
    n = len(names)
    log(f"{n} items, {truth.total} true pairs; embedded in {embed_s} s")
    cos_grid = [round(float(c), 3) for c in np.arange(args.cos_low, 0.9951, 0.01)]
    result = {
        "collection": {k: v for k, v in coll.items() if k != "edit_params"},
        "items": n,
        "true_pairs": truth.total,
        "embed_seconds": embed_s,
        "methods": {},
    }

    # (c) exact float cosine
    t0 = time.perf_counter()
    fi, fj, fc = cosine_pairs(x, args.cos_low)
    fs = time.perf_counter() - t0
    rows = sweep(truth, fi, fj, fc, cos_grid, higher=True, n=n)
    result["methods"]["float"] = {
        "sweep": rows,
        "seconds": round(fs, 2),
        "best_pairs": best(rows, args.min_precision, "pair"),
        "best_groups": best(rows, args.min_precision, "group"),
    }
    # (c') exact float cosine or pixel agreement: what the pixel confirmation adds, without codes
    t0 = time.perf_counter()
    vectors = pixel_vectors(folder, names)
    fp = pixel_pairs(vectors, fi, fj)
    fps = time.perf_counter() - t0
    combos = [(c, p) for c in cos_grid for p in args.pixel_grid]
    rows = []
    for c, p in combos:
        ok = either(fc, fp, c, p)
        rows.append(scored(truth, n, fi[ok], fj[ok], [c, p], args.group_floor))
    result["methods"]["float_pixels"] = {
        "sweep": rows,
        "seconds": round(fs + fps, 2),
        "best_pairs": best(rows, args.min_precision, "pair"),
        "best_groups": best(rows, args.min_precision, "group"),
    }
    # distances of true pairs and of the nearest non-duplicate, for the record
    same = (orig[fi] == orig[fj]) & (orig[fi] >= 0)
    result["float_cosine_of_true_pairs"] = {
        e: np.round(
            np.quantile(
                fc[same & ((edit[fi] == e) | (edit[fj] == e)) & ((edit[fi] == "original") | (edit[fj] == "original"))],
                [0, 0.01, 0.05, 0.5],
            ),
            4,
        ).tolist()
        for e in EDITS
    }

    # (b) pHash
    t0 = time.perf_counter()
    ph = phash_codes(folder, names)
    pi, pj, pd = brute_pairs(ph, args.phash_max)
    ps = time.perf_counter() - t0
    rows = sweep(truth, pi, pj, pd, list(range(args.phash_max + 1)), higher=False, n=n)
    result["methods"]["phash"] = {
        "sweep": rows,
        "seconds": round(ps, 2),
        "best_pairs": best(rows, args.min_precision, "pair"),
        "best_groups": best(rows, args.min_precision, "group"),
    }
    log(f"float and pHash scored ({fs:.1f} s, {ps:.1f} s)")

    # (a) hashindex, per code length
    result["hashindex"] = {}
    for bits in args.bits:
        ix, info = probe_and_index(args, work, coll_h5, bits, log)
        snap = ix.snapshot
        assert snap.name_list(np.arange(n)) == names, "index rows are not the embeddings' rows"
        radii = sorted({min(bits // 2, int(round(f * bits))) for f in args.radius_fracs})
        rmax = max(radii)
        t0 = time.perf_counter()
        hi, hj, hd = candidate_pairs(snap, rmax)
        join_s = time.perf_counter() - t0
        ref = brute_pairs(np.asarray(snap.codes), rmax)
        exact = all(np.array_equal(a, b) for a, b in zip((hi, hj, hd), ref))
        hc = cosines(snap, hi, hj)
        hp = pixel_pairs(vectors, hi, hj)
        # candidate distances of the true pairs (how far edits move the codes)
        tsame = (orig[hi] == orig[hj]) & (orig[hi] >= 0)
        grid, per_radius = [], []
        for r in radii:
            t0 = time.perf_counter()
            ci, cj, cd = candidate_pairs(snap, r)
            rs = time.perf_counter() - t0
            sel = hd <= r
            assert np.array_equal(ci, hi[sel]) and np.array_equal(cj, hj[sel]), "range join not monotone in r"
            cand = truth.score_pairs(ci, cj, detail=True)
            per_radius.append(
                {
                    "radius_bits": r,
                    "radius": round(r / bits, 4),
                    "join_seconds": round(rs, 3),
                    "candidates": len(ci),
                    "candidate_fraction": round(len(ci) / (n * (n - 1) / 2), 6),
                    "candidate_recall": cand["recall"],
                    "candidate_recall_by_edit": cand["recall_by_edit"],
                }
            )
            for c, p in [("none", None), *combos]:
                ok = sel & either(hc, hp, c, p)
                grid.append(scored(truth, n, hi[ok], hj[ok], [r, c, p], args.group_floor))
        out = {
            **info,
            "bits": bits,
            "join_exact_vs_bruteforce": exact,
            "join_seconds_at_max_radius": round(join_s, 3),
            "true_pair_hamming_quantiles": {q: int(np.quantile(hd[tsame], q / 100)) for q in (50, 90, 95, 99)}
            if tsame.any()
            else None,
            "true_pairs_beyond_max_radius": int(truth.total - tsame.sum()),
            "radii": per_radius,
            "grid": grid,
            "best_pairs": best(grid, args.min_precision, "pair"),
            "best_groups": best(grid, args.min_precision, "group"),
        }
        # the chosen setting through the public API: same groups as computed here
        r_c, c_c, p_c = int(round(args.check_radius * bits)), args.check_cosine, args.check_pixels
        t0 = time.perf_counter()
        recs = ix.duplicates(None, DedupConfig(radius_bits=r_c, min_cosine=c_c, min_pixels=p_c))
        api_s = time.perf_counter() - t0
        api_groups = sorted(
            tuple(sorted(ix.snapshot.positions(np.array([it["id"] for it in g["items"]])).tolist())) for g in recs
        )
        ok = (hd <= r_c) & either(hc, hp, c_c, p_c)
        mine = sorted(tuple(sorted(g.tolist())) for g in leader_groups(n, hi[ok], hj[ok]))
        out["api_check"] = {
            "radius_bits": r_c,
            "min_cosine": c_c,
            "min_pixels": p_c,
            "same_groups": api_groups == mine,
            "seconds": round(api_s, 2),
            "groups": len(recs),
            "pair": truth.score_pairs(hi[ok], hj[ok]),
            "group": truth.score_groups(leader_groups(n, hi[ok], hj[ok])),
        }
        result["hashindex"][str(bits)] = out
        log(f"hashindex {bits} bits scored (exact join: {exact}; API groups equal: {out['api_check']['same_groups']})")
    return result


# -- speed -----------------------------------------------------------------------------------


def planted_codes(n: int, bits: int, plant: float, radius: int, rng: np.random.Generator):
    """``n`` clustered codes, the last ``plant * n`` of which are copies of earlier rows with
    1..radius bits flipped; returns codes and the planted pairs (row, copy row)."""
    from hashindex.measure.synthetic import clustered_codes

    k = int(n * plant)
    codes = np.empty((n, bits // 8), np.uint8)
    codes[: n - k] = clustered_codes(n - k, bits, rng)
    src = rng.choice(n - k, k, replace=False)
    flips = np.zeros((k, bits), bool)
    nflip = rng.integers(1, max(1, radius) + 1, k)
    for t in range(k):
        flips[t, rng.choice(bits, nflip[t], replace=False)] = True
    codes[n - k :] = codes[src] ^ np.packbits(flips, axis=1)
    return codes, np.stack([src, np.arange(n - k, n)], 1)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def speed(args, log) -> list[dict]:
    from hashindex.dedup.find import JOIN_ROWS, leader_groups
    from hashindex.index.mih import MIHTables
    from hashindex.search.ranges import range_tables, self_join

    bits = 64
    out = []
    for n, frac in [(n, f) for n in args.scales for f in args.speed_radii]:
        radius = int(round(frac * bits))
        rng = np.random.default_rng(args.seed)
        t0 = time.perf_counter()
        codes, planted = planted_codes(n, bits, args.plant, radius, rng)
        gen_s = time.perf_counter() - t0
        # exactness on a sample first (cheap), with planted pairs in it
        half = min(args.check_sample // 4, len(planted))
        pick = planted[rng.choice(len(planted), half, replace=False)].reshape(-1)
        sample = np.unique(np.concatenate([pick, rng.choice(n, args.check_sample - len(pick), replace=False)]))
        sc = codes[sample]
        st = MIHTables.build(sc, range_tables(bits, len(sc), radius))
        got = self_join(st, sc, radius, np.arange(len(sc)))
        ref = brute_pairs(sc, radius)
        sample_exact = all(np.array_equal(a, b) for a, b in zip(got, ref))
        # the dedup of all rows
        m = range_tables(bits, n, radius)
        t0 = time.perf_counter()
        tables = MIHTables.build(codes, m)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        parts = []
        step = JOIN_ROWS if not args.max_join_seconds else 4096  # small steps when the join may be stopped
        for s in range(0, n, step):
            parts.append(self_join(tables, codes, radius, np.arange(s, min(n, s + step))))
            if args.max_pairs and sum(len(p[0]) for p in parts) > args.max_pairs:
                break
            if args.max_join_seconds and time.perf_counter() - t0 > args.max_join_seconds:
                break
        done = min(n, s + step)
        i, j, d = (np.concatenate(x) for x in zip(*parts))
        join_s = time.perf_counter() - t0
        del tables
        t0 = time.perf_counter()
        groups = leader_groups(n, i, j) if done == n else []
        group_s = time.perf_counter() - t0
        key = i * n + j
        pk = np.sort(planted, 1)
        pkey = pk[:, 0] * n + pk[:, 1]
        found = np.isin(pkey[pk[:, 0] < done], key).mean() if done else 0.0
        # Rows are in random order: the pairs (i < j) of the first rows are 1-(1-f)^2 of all; a row's
        # time lies between constant (its probes) and proportional to the later rows (its buckets
        # are read from the querying row on), so the whole join's is extrapolated both ways.
        f = done / n
        row = {
            "n": n,
            "bits": bits,
            "radius_bits": radius,
            "tables": m,
            "planted_pairs": len(planted),
            "rows_joined": done,
            "complete": done == n,
            "generate_seconds": round(gen_s, 1),
            "tables_seconds": round(build_s, 1),
            "join_seconds": round(join_s, 1),
            "group_seconds": round(group_s, 1),
            "dedup_seconds": round(build_s + join_s + group_s, 1),
            "pairs": len(i),
            "extrapolated_join_seconds": None if done == n else round(join_s / f, 0),
            "extrapolated_join_seconds_low": None if done == n else round(join_s / (1 - (1 - f) ** 2), 0),
            "extrapolated_pairs": None if done == n else int(len(i) / (1 - (1 - f) ** 2)),
            "groups": len(groups),
            "planted_found": round(float(found), 6),
            "sample_rows": len(sample),
            "sample_pairs": len(ref[0]),
            "sample_exact": sample_exact,
            "peak_rss_gb": round(rss_gb(), 2),
        }
        out.append(row)
        log(f"speed {n:,}: {row}")
        del codes, i, j, d, groups, parts
    return out


# -- report ----------------------------------------------------------------------------------


def fmt_best(b) -> str:
    if b is None:
        return "–"
    per = b.get("recall_by_edit", {})
    return " | ".join(
        [
            str(b["setting"]),
            f"{b['precision']:.4f}",
            f"{b['recall']:.4f}",
            *(f"{per.get(e, float('nan')):.3f}" for e in EDITS),
        ]
    )


def table(res: dict, args) -> str:
    lines = []
    if "quality" in res:
        q = res["quality"]
        head = "| method | level | setting | precision | recall | " + " | ".join(EDITS) + " |"
        lines += [
            f"Best recall at precision >= {args.min_precision} ({q['items']} items, {q['true_pairs']} true pairs):",
            "",
            head,
            "|" + "---|" * (5 + len(EDITS)),
        ]
        for bits, h in q["hashindex"].items():
            for lvl in ("pairs", "groups"):
                lines.append(
                    f"| hashindex {bits} bits (radius_bits, min_cosine, min_pixels) | {lvl} | {fmt_best(h['best_' + lvl])} |"
                )
        for name, label in (
            ("phash", "pHash 64 (Hamming <=)"),
            ("float", "float cosine (>=)"),
            ("float_pixels", "float cosine or pixels, all pairs (cosine, pixels)"),
        ):
            if name in q["methods"]:
                for lvl in ("pairs", "groups"):
                    lines.append(f"| {label} | {lvl} | {fmt_best(q['methods'][name]['best_' + lvl])} |")
        for bits, h in q["hashindex"].items():
            a = h["api_check"]
            lines += [
                "",
                f"{bits} bits, checked setting radius_bits {a['radius_bits']} min_cosine {a['min_cosine']} "
                f"min_pixels {a.get('min_pixels')} through Index.duplicates: "
                f"same groups {a['same_groups']}, pairs P {a['pair']['precision']:.4f} R {a['pair']['recall']:.4f}, "
                f"groups P {a['group']['precision']:.4f} R {a['group']['recall']:.4f}, {a['seconds']} s",
                "",
                "| radius_bits | fraction | candidates | candidate recall | join s |",
                "|---|---|---|---|---|",
            ]
            for r in h["radii"]:
                lines.append(
                    f"| {r['radius_bits']} | {r['radius']} | {r['candidates']:,} | {r['candidate_recall']:.4f} | {r['join_seconds']} |"
                )
    if "speed" in res:
        lines += [
            "",
            "| codes | radius | tables | pairs | planted found | sample exact | tables s | join s | group s | dedup s | peak RSS GB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["speed"]:
            stop = "" if r["complete"] else f" (join stopped at {r['rows_joined']:,} rows)"
            pairs = f"{r['pairs']:,}" if r["complete"] else f"{r['pairs']:,} (whole: ~{r['extrapolated_pairs']:,})"
            join = (
                f"{r['join_seconds']}"
                if r["complete"]
                else f"{r['join_seconds']} (whole: ~{r.get('extrapolated_join_seconds_low') or r['extrapolated_join_seconds']:.0f}"
                + (f"-{r['extrapolated_join_seconds']:.0f})" if r.get("extrapolated_join_seconds_low") else ")")
            )
            lines.append(
                f"| {r['n']:,}{stop} | {r['radius_bits']} | {r['tables']} | {pairs} | {r['planted_found']} | "
                f"{r['sample_exact']} | {r['tables_seconds']} | {join} | {r['group_seconds']} | {r['dedup_seconds']} | "
                f"{r['peak_rss_gb']} |"
            )
    return "\n".join(lines)


def summarize(files: list[str], min_precision: float, min_ratio: float) -> dict:
    """The defaults that hold across the quality runs in ``files``: ``min_cosine``, the smallest
    float threshold at which exact float cosine reaches ``min_precision`` on pairs and on groups
    in every run; ``min_pixels``, the smallest pixel threshold at which cosine >= min_cosine or
    pixels >= min_pixels (over the float pairs, no codes) still reaches it in every run;
    ``radius``, the smallest radius fraction at which hashindex keeps at least ``min_ratio`` of
    that rule's recall (pairs and groups) in every run and code length."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    runs = [(f, d["quality"]) for f, d in zip(files, docs)]

    def precise(r):
        return all(r[lvl] is not None and r[lvl]["precision"] >= min_precision for lvl in ("pair", "group"))

    per_run = []
    for (f, q), doc in zip(runs, docs):
        a = doc["args"]
        ok = [r["threshold"] for r in q["methods"]["float"]["sweep"] if precise(r)]
        per_run.append(
            {
                "file": f,
                "items": q["items"],
                "seed": a["seed"],
                "originals": a["originals"],
                "distractors": a["distractors"],
                "bits": a["bits"],
                "cosine_at_precision": min(ok) if ok else None,
            }
        )
    cands = [r["cosine_at_precision"] for r in per_run]
    if any(c is None for c in cands):
        return {"runs": per_run, "min_cosine": None}
    c = max(cands)
    pixel_ok = None
    for (_f, q), pr in zip(runs, per_run):
        rows = [r for r in q["methods"]["float_pixels"]["sweep"] if r["threshold"][0] == c]
        good = {r["threshold"][1] for r in rows if r["threshold"][1] is not None and precise(r)}
        pr["pixels_at_precision"] = min(good) if good else None
        pixel_ok = good if pixel_ok is None else pixel_ok & good
    p = min(pixel_ok) if pixel_ok else None
    fracs = {}
    for (f, q), pr in zip(runs, per_run):
        ref = next(r for r in q["methods"]["float_pixels"]["sweep"] if r["threshold"] == [c, p])
        pr["reference_at_defaults"] = {
            lvl: {k: ref[lvl][k] for k in ("precision", "recall")} for lvl in ("pair", "group")
        }
        for bits, h in q["hashindex"].items():
            for g in h["grid"]:
                r, cc, pp = g["threshold"]
                if cc != c or pp != p or g["group"] is None:
                    continue
                ratio = min(g[lvl]["recall"] / max(ref[lvl]["recall"], 1e-12) for lvl in ("pair", "group"))
                key = round(r / int(bits), 5)
                fracs.setdefault(key, []).append(
                    {
                        "file": f,
                        "bits": int(bits),
                        "radius_bits": r,
                        "ratio": round(ratio, 4),
                        "precision": g["pair"]["precision"],
                        "group_precision": g["group"]["precision"],
                    }
                )
    table = {k: {"min_ratio": min(v["ratio"] for v in vs), "runs": vs} for k, vs in sorted(fracs.items())}
    good = [k for k, v in table.items() if v["min_ratio"] >= min_ratio]
    by_bits = {}  # the same rule for each code length alone
    for bits in sorted({v["bits"] for vs in fracs.values() for v in vs}):
        ok = [k for k, vs in sorted(fracs.items()) if all(v["ratio"] >= min_ratio for v in vs if v["bits"] == bits)]
        ok = [k for k in ok if any(v["bits"] == bits for v in fracs[k])]
        by_bits[bits] = min(ok) if ok else None
    return {
        "radius_by_bits": by_bits,
        "min_precision": min_precision,
        "min_ratio": min_ratio,
        "runs": per_run,
        "min_cosine": c,
        "min_pixels": p,
        "radius": min(good) if good else None,
        "by_radius": table,
    }


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/hashindex-dedup", help="cache of images, embeddings, probes, indexes")
    ap.add_argument("--out", default=None, help="JSON result file (required unless --table)")
    ap.add_argument("--originals", type=int, default=1000)
    ap.add_argument("--distractors", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--px", type=int, default=112, help="side of the written images (upscaled from 28 px)")
    ap.add_argument("--image-size", type=int, default=112, help="the backbone's input size")
    ap.add_argument(
        "--distinct-cosine", type=float, default=0.95, help="pool images closer than this to a kept one are dropped"
    )
    ap.add_argument(
        "--probe-train", type=int, default=5000, help="Fashion-MNIST training images the probe is fitted on"
    )
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--bits", type=ints, default=[64], help="code lengths of the probes (empty: float and pHash only)")
    ap.add_argument("--supervised", action="store_true")
    ap.add_argument(
        "--radius-fracs",
        type=floats,
        default=[v / 64 for v in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20)],
        help="radii of the grid, as fractions of the code length",
    )
    ap.add_argument("--cos-low", type=float, default=0.80, help="lowest cosine threshold of the sweeps")
    ap.add_argument("--phash-max", type=int, default=24)
    ap.add_argument("--min-precision", type=float, default=0.99)
    ap.add_argument(
        "--group-floor", type=float, default=0.95, help="settings whose pairs are less precise skip group scoring"
    )
    ap.add_argument(
        "--check-radius", type=float, default=0.15625, help="radius fraction re-run through Index.duplicates"
    )
    ap.add_argument("--check-cosine", type=float, default=0.94, help="min_cosine re-run through Index.duplicates")
    ap.add_argument(
        "--check-pixels", type=float, default=0.994, help="min_pixels re-run through Index.duplicates (negative: off)"
    )
    ap.add_argument(
        "--pixel-grid",
        type=lambda v: [None if t == "none" else float(t) for t in v.split(",") if t],
        default=[None, 0.98, 0.985, 0.99, 0.992, 0.994, 0.996, 0.998],
        help="pixel agreement thresholds of the sweeps (none: cosine only)",
    )
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument(
        "--scales", type=ints, default=[1_000_000], help="synthetic collection sizes of the speed runs (empty: none)"
    )
    ap.add_argument(
        "--speed-radii", type=floats, default=[0.15625], help="radii of the speed runs, fractions of 64 bits"
    )
    ap.add_argument("--plant", type=float, default=0.01, help="fraction of the synthetic rows that are planted copies")
    ap.add_argument("--check-sample", type=int, default=20000)
    ap.add_argument(
        "--max-pairs", type=int, default=300_000_000, help="stop a speed run's join past this many pairs (memory)"
    )
    ap.add_argument(
        "--max-join-seconds",
        type=float,
        default=0,
        help="stop a speed run's join after this long (0: never); "
        "the whole join's time and pairs are then extrapolated from the rows done",
    )
    ap.add_argument("--table", default=None, metavar="RESULT.json", help="print the tables of a result file (no run)")
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="RESULT.json",
        help="derive the defaults from these quality results (no run); --out gets the summary",
    )
    ap.add_argument(
        "--min-ratio", type=float, default=0.95, help="--summarize: hashindex recall / float recall to reach"
    )
    args = ap.parse_args()
    args.check_pixels = None if args.check_pixels < 0 else args.check_pixels
    if args.table:
        print(table(json.loads(Path(args.table).read_text()), args))
        return
    if not args.out:
        ap.error("--out is required")
    if args.summarize:
        summ = summarize(args.summarize, args.min_precision, args.min_ratio)
        summ["command"] = "python " + " ".join(sys.argv)
        summ["date"] = time.strftime("%Y-%m-%d")
        Path(args.out).write_text(json.dumps(summ, indent=1) + "\n")
        print(
            f"min_cosine {summ['min_cosine']}, min_pixels {summ.get('min_pixels')} (precision >= {args.min_precision} "
            f"in every run), radius {summ.get('radius')} (recall >= {args.min_ratio} of float cosine or pixels at those "
            f"thresholds in every run); for each code length alone: {summ.get('radius_by_bits')}\n"
        )
        print(
            "| run | originals + distractors (items) | seed | bits | cosine reaching the precision | "
            "pixels reaching it (with that cosine) |\n|---|---|---|---|---|---|"
        )
        for r in summ["runs"]:
            print(
                f"| {Path(r['file']).name} | {r['originals']} + {r['distractors']} ({r['items']}) | {r['seed']} | "
                f"{','.join(map(str, r['bits']))} | {r['cosine_at_precision']} | {r.get('pixels_at_precision')} |"
            )
        print("\n| radius fraction | radius bits (bits) | worst recall ratio |\n|---|---|---|")
        for k, v in summ.get("by_radius", {}).items():
            rb = ", ".join(sorted({f"{x['radius_bits']} ({x['bits']})" for x in v["runs"]}))
            print(f"| {k} | {rb} | {v['min_ratio']} |")
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    import faiss
    import onnxruntime

    res = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "args": {k: v for k, v in vars(args).items()},
    }
    if not args.skip_quality:
        res["quality"] = quality(args, work, log)
    if args.scales:
        res["speed"] = speed(args, log)
    res["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    res["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(res, separators=(",", ":"), default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n"
    )
    print(table(res, args))


if __name__ == "__main__":
    main()
