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
(hashindex.measure.synthetic: 4,096 centres, or ``--centres-per-million`` of them per million
codes so that clusters keep their size as the collection grows; each bit flipped with
probability 1/8) with planted
near-duplicates (``--plant`` of the rows are copies of other rows with 1..radius bits flipped),
then dedup without floats: the multi-index tables for the radius, the range self-join (bucket
by bucket), leader grouping; every planted pair must be found, and on a ``--check-sample`` of
rows (planted pairs and random rows) the pairs must equal a brute-force NumPy popcount over all
pairs of the sample. The pairs are held in memory: 20 bytes each (10M codes at the default
radius with 4,096 centres would make ~1.7 billion; with clusters of the 1M run's size, ~170 million).

Defaults (``--summarize``): ``min_cosine`` is the smallest float threshold reaching the precision
on pairs and on groups in every quality run given; ``min_pixels`` the smallest pixel threshold at
which float_pixels with that cosine still reaches it in every run; the radius the smallest
fraction of the code length at which hashindex keeps ``--min-ratio`` of float_pixels' recall at
those thresholds in every run (over every code length, and for each code length alone).

    python benchmarks/dedup.py --work /tmp/dedup --out benchmarks/results/dedup_fmnist_seed0.json
    python benchmarks/dedup.py --work /tmp/dedup --seed 1 --scales '' --out .../dedup_fmnist_seed1.json
    python benchmarks/dedup.py --work /tmp/dedup --bits 32,128 --scales '' --out .../dedup_fmnist_bits32_128.json
    python benchmarks/dedup.py --work /tmp/dedup --skip-quality --scales 1000000,10000000 \
        --centres-per-million 4096 --out .../dedup_speed_10m_bucket_join.json
    python benchmarks/dedup.py --summarize benchmarks/results/dedup_fmnist_*.json --min-ratio 0.95 \
        --out benchmarks/results/dedup_summary.json
    python benchmarks/dedup.py --table benchmarks/results/dedup_speed_10m_bucket_join.json

The pieces: dedup_collection.py (collection, truth, probe and index), dedup_scoring.py (scores and
the reference methods), dedup_speed.py (the speed runs), dedup_report.py (tables, defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from dedup_collection import EDITS, embed_folder, make_collection, probe_and_index, truth_of, unit_rows
from dedup_report import summarize, table
from dedup_scoring import (
    Truth,
    best,
    brute_pairs,
    cosine_pairs,
    either,
    phash_codes,
    pixel_pairs,
    pixel_vectors,
    scored,
    sweep,
)
from dedup_speed import speed


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
    ap.add_argument(
        "--centres-per-million",
        type=int,
        default=None,
        help="centres of the speed runs' codes per million codes (default: 4,096 at every size, "
        "so clusters grow with the collection; 4096: clusters keep their size of the 1M run)",
    )
    ap.add_argument("--plant", type=float, default=0.01, help="fraction of the synthetic rows that are planted copies")
    ap.add_argument("--check-sample", type=int, default=20000)
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
