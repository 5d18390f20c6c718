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
    from hashindex.asymmetric import asymmetric_knn
    from hashindex.codes import unpack
    from hashindex.config import FitConfig
    from hashindex.metrics import mean_average_precision, relevance
    from hashindex.probe.fit import fit_probe
    from hashindex.store import open_embeddings

    db, q = open_embeddings(argv[0]), open_embeddings(argv[1])
    xb, xq, yb, yq = db.embeddings(), q.embeddings(), db.labels(), q.labels()
    k = min(1000, len(xb))
    with open(argv[2], "a") as out:
        for kw in json.loads(argv[3]):
            t = time.perf_counter()
            p = fit_probe(db, FitConfig(**kw), progress=False)
            fit_s = time.perf_counter() - t
            cb, lq = p.encode(xb), p.logits(xq)
            ub, uq = unpack(cb).astype(np.float32), unpack(np.packbits(lq > 0, axis=1)).astype(np.float32)
            d = (ub.shape[1] - (2 * uq - 1) @ (2 * ub - 1).T) / 2  # Hamming distances, exact
            ids = np.lexsort((np.broadcast_to(np.arange(len(xb)), d.shape), d), axis=1)[:, :k]  # ties by id
            _, aids = asymmetric_knn(lq, cb, k)
            c = np.corrcoef(ub.T.astype(np.float64))
            np.fill_diagonal(c, 0)
            row = dict(
                kw, db=argv[0], n=db.n, hamming=mean_average_precision(relevance(yq, yb, ids)),
                asymmetric=mean_average_precision(relevance(yq, yb, aids)), balance_min=float(ub.mean(0).min()),
                bit_corr_mean=float(np.abs(np.nan_to_num(c)).mean()), distinct_codes=int(len(np.unique(cb, axis=0))),
                schedule=p.meta.get("schedule"), fit_seconds=round(fit_s, 1),
            )  # fmt: skip
            print(json.dumps(row), file=out, flush=True)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
