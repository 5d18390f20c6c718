"""CroVCA on feature-space views against ITQ, on Fashion-MNIST embeddings without image views.

The embeddings of an ordinary `hashindex embed` run (no cached views) are imported back with
`hashindex import` (backbone recorded as external), as if another tool had made them; then
CroVCA (feature-space views, the defaults of hashindex.probe.feature_views) and ITQ are fitted
at several code lengths and seeds and scored by mAP@1000 (Hamming ranking, ties by id), with
float cosine as the ceiling. A small sweep of the view strength at one seed shows how the
defaults were chosen.

    python benchmarks/feature_views.py DB.h5 Q.h5 --work /work/runs/i12/fv \
        --out benchmarks/results/feature_views_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from hashindex.core.config import FitConfig
from hashindex.embedding.importer import ImportConfig, import_embeddings
from hashindex.index.load import build_index
from hashindex.measure.evaluate import evaluate
from hashindex.probe import fit as fit_mod
from hashindex.probe.feature_views import FeatureViewConfig
from hashindex.probe.fit import fit_probe
from hashindex.store.reader import open_embeddings


def imported(src: Path, work: Path) -> Path:
    out = work / f"{src.stem}-imported.h5"
    if not out.exists():
        cfg = ImportConfig(
            model_name="tf_efficientnet_lite0 (imported)", names=f"{src}:/names", labels=f"{src}:/labels"
        )
        import_embeddings([f"{src}:/embeddings"], out, cfg, progress=False)
    return out


def score(db, q, work: Path, name: str, cfg: FitConfig) -> dict:
    pdir, idir = work / "probes" / name, work / "indexes" / name
    for d in (pdir, idir):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    probe = fit_probe(db, cfg, progress=False)
    fit_s = time.perf_counter() - t0
    probe.save(pdir)
    r = evaluate(build_index(db, pdir, idir), q, 1000, with_float=False)
    return {
        "name": name,
        "method": cfg.method,
        "bits": cfg.bits,
        "seed": cfg.seed,
        "map": r["map"],
        "fit_seconds": round(fit_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("queries")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bits", default="32,64")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--sweep", default="0:0,0.3:0.5", help="dropout:noise pairs tried at 64 bits, seed 0, besides the default"
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    db = open_embeddings(imported(Path(args.db), work))
    q = open_embeddings(imported(Path(args.queries), work))
    assert db.num_views == 0
    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, sweep = [], []
    for b in bits:
        for s in seeds:
            for m in ("crovca", "itq"):
                runs.append(score(db, q, work, f"{m}-{b}-s{s}", FitConfig(method=m, bits=b, seed=s)))
                print(json.dumps(runs[-1]), flush=True)
                write(args, db, q, bits, runs, sweep, None)
    # View strength at 64 bits, seed 0 (the defaults are in the runs above).
    real = fit_mod.feature_view_fn
    for pair in filter(None, args.sweep.split(",")):
        dropout, noise = (float(v) for v in pair.split(":"))
        fit_mod.feature_view_fn = functools.partial(
            lambda x, seed, c: real(x, seed, c), c=FeatureViewConfig(dropout, noise)
        )
        try:
            r = score(db, q, work, f"sweep-{dropout}-{noise}", FitConfig(bits=64, seed=0))
        finally:
            fit_mod.feature_view_fn = real
        sweep.append(dict(r, dropout=dropout, noise=noise))
        print(json.dumps(sweep[-1]), flush=True)
        write(args, db, q, bits, runs, sweep, None)
    shutil.rmtree(work / "indexes" / "float-ref", ignore_errors=True)
    r = evaluate(build_index(db, work / "probes" / f"itq-{bits[-1]}-s0", work / "indexes" / "float-ref"), q, 1000)
    print(json.dumps(write(args, db, q, bits, runs, sweep, r["float_map"]), indent=1))


def write(args, db, q, bits, runs, sweep, float_map) -> dict:
    summary = {}
    for b in bits:
        for m in ("crovca", "itq"):
            maps = [x["map"] for x in runs if x["bits"] == b and x["method"] == m]
            if maps:
                summary[f"{m}-{b}"] = {"mean": float(np.mean(maps)), "min": float(np.min(maps)), "seeds": len(maps)}
    doc = {
        "benchmark": "feature_views_fashion_mnist",
        "date": time.strftime("%Y-%m-%d"),
        "machine": "2-core Intel Xeon, no GPU (shared)",
        "python": platform.python_version(),
        "database": {"path": args.db, "n": db.n, "dim": db.dim},
        "queries": {"path": args.queries, "n": q.n},
        "float_map": float_map,
        "feature_views_default": {"dropout": FeatureViewConfig().dropout, "noise": FeatureViewConfig().noise},
        "summary": summary,
        "runs": runs,
        "sweep_64_bits_seed0": sweep,
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    main()
