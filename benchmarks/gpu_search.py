"""Flat Hamming search on the device at hand against faiss-cpu ``IndexBinaryFlat``.

For each code length and database size: uniform random codes and queries; faiss-cpu and the torch
engine of :mod:`hashindex.search.gpu` (on CUDA when present, else torch on the CPU, which is
not what it is for: the CPU figure only shows what torch's elementwise ops cost there), and faiss
``GpuIndexBinaryFlat`` when this faiss has GPU support. Each engine answers every query once after
a one-query warm-up, side by side in the same process; the results are compared for equality
(distances and ids, ties by id), and the ratio of queries/s to faiss-cpu's is the figure to read.

    nice -n 10 python benchmarks/gpu_search.py --sizes 1000000 --out benchmarks/results/gpu_search.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _timed(search, xq: np.ndarray, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    search(xq[:1], k)  # warm-up: first kernels, caches
    t0 = time.perf_counter()
    d, i = search(xq, k)  # results come back as NumPy arrays: the device has finished
    return len(xq) / (time.perf_counter() - t0), d, i


def run_case(n: int, bits: int, nq: int, k: int, device: str, rng) -> dict:
    import faiss

    from hashindex.search.gpu import FaissGpuHamming, TorchHamming

    xb = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    xq = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    fi = faiss.IndexBinaryFlat(bits)
    fi.add(xb)
    qps_cpu, d_ref, i_ref = _timed(fi.search, xq, k)
    del fi
    out = {"n": n, "bits": bits, "queries": nq, "k": k, "faiss_cpu_qps": round(qps_cpu, 1)}
    engines = [("torch", lambda: TorchHamming(xb, device))]
    if device == "cuda" and hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0:
        engines.append(("faiss_gpu", lambda: FaissGpuHamming(xb)))
    for name, make in engines:
        t0 = time.perf_counter()
        engine = make()
        load = time.perf_counter() - t0
        qps, d, i = _timed(engine.search, xq, k)
        out[name] = {
            "qps": round(qps, 1),
            "ratio_to_faiss_cpu": round(qps / qps_cpu, 3),
            "load_seconds": round(load, 3),
            "equal_to_faiss_cpu": bool(np.array_equal(d, d_ref) and np.array_equal(i, i_ref)),
        }
        del engine
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="database sizes, comma-separated")
    ap.add_argument("--bits", default="16,64,128", help="code lengths, comma-separated")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/gpu_search.json")
    ap.add_argument("--note", default="", help="what else ran on the machine, and the like")
    args = ap.parse_args(argv)
    import faiss
    import torch

    from hashindex.measure.bench import machine_info
    from hashindex.measure.report import describe_machine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    cases = [
        run_case(n, b, args.queries, args.k, device, rng)
        for b in map(int, args.bits.split(","))
        for n in map(int, args.sizes.split(","))
    ]
    doc = {
        "command": "python benchmarks/gpu_search.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe_machine(machine_info()),
        "device": torch.cuda.get_device_name(0)
        if device == "cuda"
        else "cpu (no CUDA device: torch on the CPU against faiss-cpu)",
        "threads": {"faiss_omp": faiss.omp_get_max_threads(), "torch": torch.get_num_threads()},
        "faiss_gpu": bool(hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0),
        "codes": "uniform random bits",
        "note": args.note,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()


def render(doc: dict) -> list[str]:
    """The BENCHMARKS.md section of a gpu_search.json."""
    lines = [
        "### Hamming search through torch (the GPU path) against faiss-cpu",
        "",
        f"Command: `{doc['command']}`; {doc['date']}, {doc['machine']}; device: {doc['device']}. Uniform random codes,",
        "queries/s of one batched search; the torch path's results are compared with faiss-cpu's (ids and distances).",
        "",
        "| items | bits | queries | k | faiss-cpu q/s | torch q/s | torch / faiss-cpu | equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cases"]:
        t = c["torch"]
        lines.append(
            f"| {c['n']:,} | {c['bits']} | {c['queries']} | {c['k']} | {c['faiss_cpu_qps']:,.1f} | {t['qps']:,.1f} | {t['ratio_to_faiss_cpu']:.3f} | {'yes' if t['equal_to_faiss_cpu'] else 'NO'} |"
        )
    return lines
