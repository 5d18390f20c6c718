"""Fit CroVCA (or a baseline) with several option sets on one embeddings file and measure what
explains the quality: mAP@1000 of Hamming and asymmetric ranking, bit balance, correlation
between bits, distinct codes and the schedule run. One JSON line per fit (appended to OUT).

    .venv/bin/python benchmarks/fit_grid.py DB.h5 Q.h5 OUT.jsonl '[{"bits": 16, "seed": 0}, {"bits": 16, "eps": 0.0125}]'

Each object holds FitConfig options. Used for the 16-bit stability and schedule measurements in
BENCHMARKS.md ("Quality across seeds on Fashion-MNIST subsets").
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        sys.exit(__doc__)
    from hashindex.core.codes import unpack
    from hashindex.core.config import FitConfig
    from hashindex.measure.bench_seeds import ranking_maps
    from hashindex.probe.fit import fit_probe
    from hashindex.store.reader import open_embeddings

    db, q = open_embeddings(argv[0]), open_embeddings(argv[1])
    xb, xq, yb, yq = db.embeddings(), q.embeddings(), db.labels(), q.labels()
    k = min(1000, len(xb))
    with open(argv[2], "a") as out:
        for kw in json.loads(argv[3]):
            t = time.perf_counter()
            p = fit_probe(db, FitConfig(**kw), progress=False)
            fit_s = time.perf_counter() - t
            maps = ranking_maps(p, xb, xq, yb, yq, k)  # the bench's own measurement (faiss, ties by id)
            cb = p.encode(xb)
            ub = unpack(cb).astype(np.float32)
            c = np.corrcoef(ub.T.astype(np.float64))
            np.fill_diagonal(c, 0)
            row = dict(
                kw,
                db=argv[0],
                n=db.n,
                nq=len(xq),
                hamming=maps["hamming"],
                asymmetric=maps["asymmetric"],
                balance_min=float(ub.mean(0).min()),
                bit_corr_mean=float(np.abs(np.nan_to_num(c)).mean()),
                distinct_codes=int(len(np.unique(cb, axis=0))),
                schedule=p.meta.get("schedule"),
                fit_seconds=round(fit_s, 1),
            )
            print(json.dumps(row), file=out, flush=True)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])


def render(rows: list[dict], command: str) -> list[str]:
    """BENCHMARKS.md rows of a fit_grid run over seeds: per option set (seed aside), mAP per seed,
    mean and minimum of Hamming and asymmetric ranking."""
    from hashindex.core.config import FitConfig

    options = set(FitConfig.__dataclass_fields__) - {"seed"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["n"], json.dumps({k: v for k, v in r.items() if k in options}, sort_keys=True))
        groups.setdefault(key, []).append(r)
    lines = [
        f"Command: `{command}`.",
        "",
        "| database | options | seeds | Hamming mAP per seed | mean | min | asymmetric mean / min | mean bit correlation | distinct codes | fit s (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (n, key), rs in groups.items():
        h = [100 * r["hamming"] for r in rs]
        a = [100 * r["asymmetric"] for r in rs]
        per = ", ".join(f"{r.get('seed', 0)}: {x:.1f}" for r, x in zip(rs, h))
        lines.append(
            f"| {n:,} | `{key}` | {len(rs)} | {per} | {np.mean(h):.1f} | {min(h):.1f} | {np.mean(a):.1f} / {min(a):.1f} | "
            f"{np.mean([r['bit_corr_mean'] for r in rs]):.3f} | {np.mean([r['distinct_codes'] for r in rs]):,.0f} | {np.mean([r['fit_seconds'] for r in rs]):.0f} |"
        )
    return lines
