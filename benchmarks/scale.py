"""Scale benchmark: a 10M x 256 import/fit/build through the CLI, and 100M-code search.

Part A (peak RSS of each stage, each in its own process, read with ``wait4``):
  1. synthetic float32 embeddings as sharded ``.npy`` files (``--rows`` x ``--dim``, 250k rows a
     shard; rows drawn around 1,000 Gaussian centres, so the probe has structure to learn);
  2. ``hashindex import`` of the shards; 3. ``hashindex fit-probe --bits 64`` (CroVCA on
  feature-space views, fitted on the default ``--sample``); 4. ``hashindex build`` (flat);
  5. one cold ``hashindex query --embeddings`` process on the built index (its wall time and peak RSS).

Part B (``--codes`` 64-bit codes, a clustered synthetic collection): codes drawn around 4,096
random centres, each bit flipped with probability 1/8 (the AND of three random bits), queries
drawn the same way. A flat faiss index over them is written and memory-mapped the way
``load_index(mmap=True)`` does (``IO_FLAG_MMAP_IFC``); its resident memory is RssAnon + RssFile
of the process after a full scan, minus the same before loading: every page of the mapped file
that the scan touched counts, as if it were private memory. Then flat queries/s (a batch) and
single-query latency (p50/p99); an IVF index (trained on a sample, as ``make_faiss_index``
does) at increasing nprobe until recall@10 against flat reaches the target, with its queries/s.

    nice python benchmarks/scale.py --work /work/runs/i12/scale --out benchmarks/results/scale.json

The results file gathers runs: part A one entry per (rows, dim), part B the latest run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARD_ROWS = 250_000
HASHINDEX = str(Path(sys.executable).with_name("hashindex"))


def _mem() -> dict:
    with open("/proc/self/status") as fh:
        return {
            k: int(v.split()[0]) * 1024
            for k, v in (line.split(":", 1) for line in fh)
            if k in ("RssAnon", "RssFile", "VmHWM")
        }


def run_child(argv: list[str], log) -> dict:
    """Run a command, return its wall time and peak RSS (``wait4``'s ru_maxrss of that process)."""
    t0 = time.perf_counter()
    # One thread for torch and faiss: on an oversubscribed machine OpenMP's spinning barriers make
    # two threads many times slower than one (measured: single-query flat search 14 ms vs 1.1 s).
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = p.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    rec = {
        "argv": " ".join(argv).replace(sys.executable, "python"),
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "exit": p.returncode,
    }
    log(json.dumps(rec) + "\n" + out[-2000:])
    if p.returncode:
        raise SystemExit(f"failed: {rec}")
    try:
        rec["result"] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    return rec


# -- part A --------------------------------------------------------------------------------------


def gen_shards(work: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32) * 2
    (work / "shards").mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(range(0, rows, SHARD_ROWS)):
        path = work / "shards" / f"emb-{i:04d}.npy"
        if path.exists():
            continue
        m = min(SHARD_ROWS, rows - s)
        tmp = path.with_suffix(".tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(m, dim))
        for c in range(0, m, 65536):
            k = min(65536, m - c)
            arr[c : c + k] = centres[rng.integers(0, 1000, k)] + rng.standard_normal((k, dim), dtype=np.float32)
        arr.flush()
        del arr
        os.replace(tmp, path)


# -- part B --------------------------------------------------------------------------------------


def clustered_codes(n: int, seed: int):
    """Chunks of 64-bit codes around 4,096 centres (always the same ones) with a 1/8 flip
    probability per bit: :mod:`hashindex.measure.synthetic`'s collection, drawn by seed."""
    from hashindex.measure.synthetic import iter_clustered, random_centres

    return iter_clustered(n, random_centres(64, np.random.default_rng(12345)), np.random.default_rng(seed))


def gen_codes(work: Path, n: int) -> dict:
    import faiss

    path = work / f"flat-{n}.faiss"
    if not path.exists():
        index = faiss.IndexBinaryFlat(64)
        for c in clustered_codes(n, seed=1):
            index.add(c)
        faiss.write_index_binary(index, str(path.with_suffix(".tmp")))
        os.replace(path.with_suffix(".tmp"), path)
    return {"path": str(path), "bytes": path.stat().st_size}


def _latency(index, xq, k: int) -> dict:
    lat = []
    for q in xq:
        t0 = time.perf_counter()
        index.search(q[None], k)
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat) * 1000
    return {
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "calls": len(lat),
    }


def _qps(index, xq, k: int):
    t0 = time.perf_counter()
    d, i = index.search(xq, k)
    return len(xq) / (time.perf_counter() - t0), d, i


def search_flat(work: Path, n: int, nq: int, nlat: int) -> dict:
    import faiss

    xq = next(clustered_codes(nq, seed=2))
    before = _mem()
    t0 = time.perf_counter()
    index = faiss.read_index_binary(str(work / f"flat-{n}.faiss"), faiss.IO_FLAG_MMAP_IFC)
    load_s = time.perf_counter() - t0
    qps, d, ids = _qps(index, xq, 10)  # touches every page of the codes
    after = _mem()
    np.save(work / f"gt-{n}.npy", np.stack([d, ids]))
    resident = (after["RssAnon"] - before["RssAnon"]) + (after["RssFile"] - before["RssFile"])
    return {
        "ntotal": index.ntotal,
        "load_seconds": round(load_s, 3),
        "qps": round(qps, 2),
        "queries": nq,
        "latency": _latency(index, xq[:nlat], 10),
        "resident_bytes": resident,
        "resident_bytes_per_item": round(resident / n, 3),
        "resident_anon_bytes": after["RssAnon"] - before["RssAnon"],
        "resident_file_bytes": after["RssFile"] - before["RssFile"],
    }


def search_ivf(work: Path, n: int, nq: int, nlat: int, nlist: int, target: float) -> dict:
    """IVF (trained on a sample, as ``build`` does) at doubling nprobe until recall@10 against
    the flat results reaches ``target``: :func:`hashindex.measure.synthetic.ivf_at_recall`."""
    import faiss

    from hashindex.measure.synthetic import ivf_at_recall

    flat = faiss.read_index_binary(str(work / f"flat-{n}.faiss"), faiss.IO_FLAG_MMAP_IFC)
    codes = faiss.vector_to_array(flat.xb).reshape(n, 8)
    xq = next(clustered_codes(nq, seed=2))
    gd, _ = np.load(work / f"gt-{n}.npy")
    iv = ivf_at_recall(codes, xq, gd, nlist, target)
    del codes, flat
    sweep = [
        {"nprobe": r["nprobe"], "qps": round(r["qps"], 1), "recall_at_10": round(r["recall"], 4)} for r in iv["sweep"]
    ]
    at = iv["at_target"]
    best = None
    if at is not None:
        index = iv["index"]
        index.nprobe = at["nprobe"]
        best = dict(sweep[-1], latency=_latency(index, xq[:nlat], 10))
    return {
        "nlist": nlist,
        "build_seconds": round(iv["build_seconds"], 1),
        "sweep": sweep,
        "at_target": best,
        "peak_rss_bytes": _mem()["VmHWM"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="Scratch folder (tens of GB), outside the repository.")
    ap.add_argument("--out", help="Results JSON.")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2, help="CroVCA epochs of the fit stage.")
    ap.add_argument("--codes", type=int, default=100_000_000)
    ap.add_argument("--nlist", type=int, default=2048)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--latency-queries", type=int, default=50)
    ap.add_argument("--parts", default="a,b", help="a: import/fit/build; b: flat search; ivf: IVF against flat")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage:  # a child process
        fn = {
            "gen_shards": lambda: gen_shards(work, args.rows, args.dim),
            "gen_codes": lambda: gen_codes(work, args.codes),
            "flat": lambda: search_flat(work, args.codes, args.queries, args.latency_queries),
            "ivf": lambda: search_ivf(work, args.codes, args.queries, args.latency_queries, args.nlist, 0.95),
        }[args.stage]
        print(json.dumps(fn()))
        return
    logf = open(work / "scale.log", "a")

    def log(s):
        logf.write(s + "\n")
        logf.flush()

    me = [
        sys.executable,
        __file__,
        "--work",
        str(work),
        "--rows",
        str(args.rows),
        "--dim",
        str(args.dim),
        "--codes",
        str(args.codes),
        "--nlist",
        str(args.nlist),
        "--queries",
        str(args.queries),
        "--latency-queries",
        str(args.latency_queries),
    ]
    out = Path(args.out) if args.out else work / "scale.json"
    # The results file gathers runs: part A per (rows, dim), part B replaced by the latest run.
    res = json.loads(out.read_text()) if out.exists() else {}
    run_info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU"}

    def save():
        for part in [*res.get("part_a", []), res.get("search", {})]:
            part.setdefault("load_average_at_end", round(os.getloadavg()[0], 1))
        out.write_text(json.dumps(res, indent=1) + "\n")

    parts = args.parts.split(",")
    if "a" in parts:
        a = dict(run_info, rows=args.rows, dim=args.dim)
        res["part_a"] = [p for p in res.get("part_a", []) if (p["rows"], p["dim"]) != (args.rows, args.dim)] + [a]
        a["generate"] = run_child(me + ["--stage", "gen_shards"], log)
        shards = sorted(str(p) for p in (work / "shards").glob("emb-*.npy"))
        emb, probe, index = work / "emb.h5", work / "probe", work / "index"
        for p in (emb, probe, index):
            subprocess.run(["rm", "-rf", str(p)], check=True)
        model = f"synthetic-{args.dim}"
        a["import"] = run_child([HASHINDEX, "-q", "import", *shards, str(emb), "--model-name", model], log)
        save()
        a["fit_probe"] = run_child(
            [HASHINDEX, "-q", "fit-probe", str(emb), str(probe), "--bits", "64", "--epochs", str(args.epochs)], log
        )
        save()
        a["build"] = run_child([HASHINDEX, "-q", "build", str(emb), str(probe), str(index)], log)
        # A cold query process on the built index: open (verifying every file), search, name the hits.
        q = work / "q.h5"
        subprocess.run(["rm", "-f", str(q)], check=True)
        np.save(work / "q.npy", np.load(shards[0], mmap_mode="r")[:10])
        run_child([HASHINDEX, "-q", "import", str(work / "q.npy"), str(q), "--model-name", model], log)
        a["query"] = run_child(
            [HASHINDEX, "-q", "query", str(index), "--embeddings", str(q), "--limit", "1", "-k", "10", "--json"], log
        )
        a["target_peak_rss_bytes"] = 3 * 2**30
        a["met"] = all(a[k]["peak_rss_bytes"] < 3 * 2**30 for k in ("import", "fit_probe", "build"))
        save()
    if "b" in parts or "ivf" in parts:
        b = res["search"] = dict(
            run_info,
            nlist=args.nlist,
            collection="64-bit codes around 4,096 random centres, each bit flipped with probability 1/8",
        )
        b["generate"] = run_child(me + ["--stage", "gen_codes"], log)
        b["flat"] = run_child(me + ["--stage", "flat"], log)
        flat = b["flat"]["result"]
        b["targets"] = {
            "flat_resident_bytes_per_item": flat["resident_bytes_per_item"],
            "flat_resident_limit": 1.2 * (64 / 8 + 8),
            "flat_resident_met": flat["resident_bytes_per_item"] <= 1.2 * (64 / 8 + 8),
        }
        save()
    if "ivf" in parts:
        b = res["search"]
        b["ivf"] = run_child(me + ["--stage", "ivf"], log)
        flat, ivf = b["flat"]["result"], b["ivf"]["result"]
        at = ivf["at_target"]
        b["targets"]["ivf_speedup_at_recall_0.95"] = None if at is None else round(at["qps"] / flat["qps"], 1)
        b["targets"]["ivf_speedup_met"] = at is not None and at["qps"] >= 10 * flat["qps"]
        save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
