"""How many multi-index hashing tables: mih latency against the number of tables (the substring
length) at several collection sizes and code lengths, to choose the rule behind
:func:`hashindex.core.codes.default_mih_tables`.

Per collection (clustered codes as in ``benchmarks/mih.py``: 4,096 random centres, each bit
flipped with probability 1/8; queries drawn the same way), one thread, k = 100, single queries:
every table count of the sweep measured taking turns block by block (``mih.interleaved``), mean
CPU time per query; exactness of every answer against faiss's distances.

    .venv/bin/python benchmarks/mih_tables.py --out benchmarks/results/mih_tables.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mih import K, interleaved, machine, single_thread, tables_bytes


def sweep(n: int, bits: int, queries: int, rounds: int, seed: int, log, only=None) -> dict:
    import faiss

    from hashindex.core.codes import default_mih_tables
    from hashindex.index.mih import MIHTables
    from hashindex.measure.synthetic import clustered_codes
    from hashindex.search.engines import CodeIndex, MIHEngine

    rng = np.random.default_rng(seed)
    codes = clustered_codes(n + queries, bits, rng)
    db, qc = codes[:n], np.ascontiguousarray(codes[n:])
    del codes
    fi = faiss.IndexBinaryFlat(bits)
    fi.add(db)
    fd, _ = fi.search(qc, K)
    log2n = math.log2(n)
    # substring lengths from log2(n) down to log2(n) - 10 (at least 6 bits), as table counts
    counts = sorted({min(bits, math.ceil(bits / max(6.0, log2n - c))) for c in range(0, 11)})
    counts = [m for m in counts if only is None or m in only]  # --tables: memory for a few only
    fns, sizes, exact = {}, {}, {}
    for m in counts:
        t = MIHTables.build(db, m)
        ix = CodeIndex(db, None, MIHEngine(db, t), "mih")
        fns[m] = lambda q, ix=ix: ix.search(q, K)
        sizes[m] = tables_bytes(t) / n
        exact[m] = bool(np.array_equal(ix.search(qc, K)[0], fd))
    lat = interleaved({str(m): f for m, f in fns.items()}, qc, rounds, seed)
    rows = [
        {
            "tables": m,
            "substring_bits": bits / m,
            "cpu_mean_ms": lat[str(m)]["cpu"]["mean_ms"],
            "cpu_p50_ms": lat[str(m)]["cpu"]["p50_ms"],
            "bytes_per_item": sizes[m],
            "exact": exact[m],
        }
        for m in counts
    ]
    best = min(rows, key=lambda r: r["cpu_mean_ms"])
    default = default_mih_tables(bits, n)
    log(
        f"{n:,} x {bits}: best {best['tables']} tables ({best['substring_bits']:.1f}-bit substrings, "
        f"{best['cpu_mean_ms']:.3f} ms); default {default}; "
        + ", ".join(f"{r['tables']}: {r['cpu_mean_ms']:.3f}" for r in rows)
    )
    return {"n": n, "bits": bits, "log2_n": log2n, "queries": queries, "default_tables": default, "rows": rows}


def render(doc: dict) -> list[str]:
    runs = [*doc.get("earlier_runs", []), doc]
    lines = [
        "## Multi-index hashing: how many tables",
        "",
        f"Clustered codes, k = {K}, single queries, one thread, mean CPU time per query (ms); the table counts of one "
        "collection take turns block by block. Every answer's distances equal faiss's.",
        "",
        "| collection | log2 n | default tables at the time | latency by tables (substring bits): ms | best | command, date |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["collections"]:
            best = min(r["rows"], key=lambda x: x["cpu_mean_ms"])
            cells = ", ".join(f"{x['tables']} ({x['substring_bits']:.1f}): {x['cpu_mean_ms']:.3f}" for x in r["rows"])
            lines.append(
                f"| {r['n']:,} x {r['bits']} | {r['log2_n']:.1f} | {r['default_tables']} | {cells} | {best['tables']} | "
                f"`{run['command']}`, {run['date']}, {run['machine']['cpu']} |"
            )
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="100000:64,1000000:64,10000000:64,100000:128,1000000:128")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", type=lambda v: {int(x) for x in v.split(",")}, default=None, help="only these counts")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "mih_tables.json")
    args = ap.parse_args(argv)
    if args.out.exists():  # runs at other scales add to the file
        doc_before = json.loads(args.out.read_text())
    else:
        doc_before = None
    single_thread()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    doc = {
        "command": "python benchmarks/mih_tables.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "collections": [],
    }
    if doc_before is not None:
        doc["earlier_runs"] = doc_before.get("earlier_runs", []) + [
            {k: doc_before[k] for k in ("command", "date", "machine", "collections")}
        ]
    for item in args.scales.split(","):
        n, bits = (int(v) for v in item.split(":"))
        doc["collections"].append(sweep(n, bits, args.queries, args.rounds, args.seed, log, args.tables))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(render(doc)))


if __name__ == "__main__":
    main()
