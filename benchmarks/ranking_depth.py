"""mAP at several ranking depths k for CroVCA option sets, ITQ and float cosine on one embeddings
pair, over seeds. On a small collection mAP@1000 ranks half the database, so it rewards codes that
keep whole classes together more than codes that order each query's nearest items well; this shows
both ends side by side.

    .venv/bin/python benchmarks/ranking_depth.py DB.h5 Q.h5 OUT.json --seeds 0,1,2 --depths 100,250,1000 \
        --options '[{"bits": 64}, {"bits": 64, "reg": 0.03}, {"bits": 64, "method": "itq"}]'
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys

import numpy as np


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db")
    ap.add_argument("q")
    ap.add_argument("out")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--depths", default="100,250,1000")
    ap.add_argument("--options", required=True, help="JSON list of FitConfig option sets")
    a = ap.parse_args(argv)
    from hashindex.core.config import FitConfig
    from hashindex.measure.bench import machine_info
    from hashindex.measure.bench_seeds import ranking_maps
    from hashindex.measure.metrics import mean_average_precision, relevance
    from hashindex.probe.fit import fit_probe
    from hashindex.store.reader import open_embeddings

    db, q = open_embeddings(a.db), open_embeddings(a.q)
    xb, xq, yb, yq = db.embeddings(), q.embeddings(), db.labels(), q.labels()
    depths = [min(int(k), len(xb)) for k in a.depths.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    xbn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    xqn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    order = np.argsort(-(xqn @ xbn.T), axis=1, kind="stable")[:, : max(depths)]  # ties by id, as the index
    rows = [
        {
            "options": {"method": "float"},
            "seed": None,
            "k": k,
            "hamming": mean_average_precision(relevance(yq, yb, order[:, :k])),
        }
        for k in depths
    ]
    for opts in json.loads(a.options):
        for s in seeds:
            p = fit_probe(db, FitConfig(**opts, seed=s), progress=False)
            for k in depths:
                rows.append({"options": opts, "seed": s, "k": k, **ranking_maps(p, xb, xq, yb, yq, k)})
                print(json.dumps(rows[-1]), flush=True)
    doc = {
        "command": "python benchmarks/ranking_depth.py " + shlex.join(argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine_info(),
        "database": {"path": a.db, "n": db.n},
        "queries": {"path": a.q, "n": len(xq)},
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)


def render(doc: dict) -> list[str]:
    """BENCHMARKS.md rows: per option set and depth, Hamming mAP mean and min over seeds."""
    from hashindex.measure.report import describe_machine

    depths = sorted({r["k"] for r in doc["rows"]})
    groups: dict[str, dict[int, list[float]]] = {}
    for r in doc["rows"]:
        groups.setdefault(json.dumps(r["options"], sort_keys=True), {}).setdefault(r["k"], []).append(r["hamming"])
    seeds = sorted({r["seed"] for r in doc["rows"] if r["seed"] is not None})
    out = [
        f"Command: `{doc['command']}`; {doc['date']}, {describe_machine(doc['machine'])}. Database {doc['database']['n']:,} "
        f"items, {doc['queries']['n']:,} queries; Hamming ranking with ties by id (float: cosine); mean / min over seeds {', '.join(map(str, seeds))}.",
        "",
        "| options | " + " | ".join(f"mAP@{k}" for k in depths) + " |",
        "|---|" + "---|" * len(depths),
    ]
    for opts, by_k in groups.items():
        cells = [
            f"{100 * np.mean(by_k[k]):.1f} / {100 * min(by_k[k]):.1f}"
            if len(by_k[k]) > 1
            else f"{100 * by_k[k][0]:.1f}"
            for k in depths
        ]
        out.append(f"| `{opts}` | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
