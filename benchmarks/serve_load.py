"""Load benchmark of `hashindex serve`: closed-loop HTTP clients over loopback against a served
index, beside the in-process one-query-at-a-time rate of the same index in the same run.

    .venv/bin/python benchmarks/serve_load.py --out benchmarks/results/serve_load.json

Parts (each bounded in requests and seconds):
- search by embedding and by id on a 64-bit flat index of 1M items, built through the library
  (synthetic 64-d Gaussian embeddings, an LSH probe), 4 clients;
- search by image on a small Fashion-MNIST index with the real EfficientNet-Lite0: micro-batched
  (default server) vs one image at a time (``max_batch=1``), same clients, same run;
- ``add`` of 1,000 items to the 1M index: the commit (encode, files, fsyncs, manifest, snapshot).
The server runs in its own process bound to 127.0.0.1; clients are threads of this process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serving import Server, closed_loop, image_index, png_queries, record, target_table  # noqa: E402


def _synthetic_embeddings(path: Path, n: int, dim: int, seed: int):
    from hashindex.store.reader import open_embeddings
    from hashindex.store.writer import EmbeddingsWriter

    spec = {
        "model": "synthetic",
        "weights": "random",
        "weights_sha256": None,
        "image_size": 32,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "num_features": dim,
    }
    attrs = {
        "backbone": json.dumps(spec),
        "augment": "{}",
        "views": 0,
        "seed": seed,
        "source": json.dumps({"kind": "synthetic"}),
        "label_names": "null",
    }
    w = EmbeddingsWriter(path, n=n, dim=dim, views=0, label_dim=0, attrs=attrs)
    rng = np.random.default_rng(seed)
    step = 200_000
    for s in range(0, n, step):
        m = min(step, n - s)
        w.append(
            items_done=s + m,
            embeddings=rng.standard_normal((m, dim), dtype=np.float32),
            views=None,
            labels=None,
            names=[f"syn/{i}" for i in range(s, s + m)],
            source_index=np.arange(s, s + m),
        )
    w.finish()
    return open_embeddings(path)


def in_process(fn, n: int, max_seconds: float) -> dict:
    """One query at a time in this process: queries/s and latency percentiles."""
    fn(0)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - s)
        if s - t0 > max_seconds:
            break
    a = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "qps": round(len(lat) / (time.perf_counter() - t0), 1),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def bench_big(work: Path, n: int, k: int, clients: int, seconds: float, log) -> dict:
    import hashindex

    t = time.perf_counter()
    emb = _synthetic_embeddings(work / "big.h5", n, 64, 0)
    hashindex.fit_probe(emb, work / "big-probe", method="lsh", bits=64)
    ix = hashindex.build_index(emb, work / "big-probe", work / "big", kind="flat")
    log(f"built the {n:,}-item index in {time.perf_counter() - t:.1f}s")
    import faiss

    snap = ix.snapshot
    rng = np.random.default_rng(1)
    xq = rng.standard_normal((2000, 64)).astype(np.float32)
    qids = rng.integers(0, n, 2000)
    out = {"n": n, "bits": 64, "k": k, "kind": "flat"}
    # The baseline is the faster of faiss's default OpenMP threads and one thread (the server's).
    default_threads = faiss.omp_get_max_threads()
    for what, fn in (
        ("embedding", lambda i: snap.search(xq[i % 2000 : i % 2000 + 1], k)),
        ("id", lambda i: snap.search_id(int(qids[i % 2000]), k)),
    ):
        runs = []
        for threads in sorted({1, default_threads}):
            faiss.omp_set_num_threads(threads)
            runs.append(dict(in_process(fn, 2000, seconds / 2), omp_threads=threads))
        out[f"in_process_{what}"] = max(runs, key=lambda r: r["qps"])
        out[f"in_process_{what}_all"] = runs
    faiss.omp_set_num_threads(default_threads)
    log(f"in-process: {out['in_process_embedding']['qps']} q/s by embedding, {out['in_process_id']['qps']} by id")
    with Server(work / "big") as srv:
        out["served_embedding"] = closed_loop(
            srv.url,
            lambda c, r: c.post_json("/search", {"embedding": xq[r.integers(2000)].tolist(), "k": k}),
            clients,
            20_000,
            seconds,
        )
        out["served_id"] = closed_loop(
            srv.url, lambda c, r: c.post_json("/search", {"id": int(r.integers(n)), "k": k}), clients, 20_000, seconds
        )
    log(f"served: {out['served_embedding']['qps']} q/s by embedding, {out['served_id']['qps']} by id")
    # add 1,000 items to the 1M index: the commit (the embedding is done before it)
    times = []
    for rep in range(3):
        x = rng.standard_normal((1000, 64)).astype(np.float32)
        s = time.perf_counter()
        ix.add(x, [f"added/{rep}/{j}" for j in range(1000)])
        times.append(time.perf_counter() - s)
    s = time.perf_counter()
    ix.remove(ix.snapshot.ids[-1000:])
    remove_s = time.perf_counter() - s
    s = time.perf_counter()
    ix.compact()
    out["add_1000"] = {
        "seconds": [round(v, 3) for v in times],
        "median_s": round(float(np.median(times)), 3),
        "remove_1000_s": round(remove_s, 3),
        "compact_s": round(time.perf_counter() - s, 3),
        "ntotal_after": ix.ntotal,
    }
    log(f"add of 1,000: {out['add_1000']}")
    return out


def bench_images(work: Path, n_db: int, k: int, clients: list[int], seconds: float, log) -> dict:
    image_index(work, n_db)
    blobs = png_queries(200)

    def query(c, r):
        return c.post_image("/search", blobs[r.integers(200)], {"k": k})

    out = {"n": n_db, "bits": 64, "k": k, "image_size": 112, "runs": []}
    for nc in clients:
        row = {"clients": nc}
        for mode, cfg in (
            ("one_at_a_time", {"max_batch": 1}),
            ("micro_batched", {"max_batch": 32, "batch_wait_ms": 5.0}),
        ):
            with Server(work / "fm", **cfg) as srv:
                row[mode] = closed_loop(srv.url, query, nc, 5000, seconds)
        row["speedup"] = round(row["micro_batched"]["qps"] / row["one_at_a_time"]["qps"], 2)
        log(
            f"images, {nc} clients: {row['one_at_a_time']['qps']} q/s one at a time, {row['micro_batched']['qps']} micro-batched ({row['speedup']}x)"
        )
        out["runs"].append(row)
    return out


def targets(doc: dict) -> list[dict]:
    big, img = doc["big"], doc["images"]
    out = []
    for what in ("embedding", "id"):
        ratio = big[f"served_{what}"]["qps"] / big[f"in_process_{what}"]["qps"]
        out.append(
            {
                "name": f"served search by {what} >= 0.5x in-process one-at-a-time (1M, 64-bit flat, {big['served_' + what]['clients']} clients)",
                "value": round(ratio, 2),
                "threshold": 0.5,
                "met": ratio >= 0.5,
            }
        )
    for run in img["runs"]:
        out.append(
            {
                "name": f"image search micro-batched >= 2x one-at-a-time ({run['clients']} clients)",
                "value": run["speedup"],
                "threshold": 2.0,
                "met": run["speedup"] >= 2.0,
            }
        )
    med = big["add_1000"]["median_s"]
    out.append(
        {"name": "add of 1,000 items to a 1M index: commit < 1 s", "value": med, "threshold": 1.0, "met": med < 1.0}
    )
    return out


def render_markdown(doc: dict) -> list[str]:
    """The BENCHMARKS.md section (used by benchmarks/collect.py)."""
    big, img = doc["big"], doc["images"]
    lines = [
        "## Serving: `hashindex serve` under load",
        "",
        f"Command: `{doc['command']}`; {doc['date']}, {doc['machine']}. {doc.get('note', '')} Server and clients share the machine; "
        "clients are closed-loop (each sends its next request when the previous one is answered) over 127.0.0.1, "
        "threads of one process with a keep-alive connection each. The server searches with one faiss thread per "
        "request and up to 2 requests at once; the in-process baseline is the faster of 1 and 2 faiss threads.",
        "",
        f"Search on a {big['n']:,}-item {big['bits']}-bit flat index (synthetic 64-d embeddings, LSH probe), k = {big['k']}:",
        "",
        "| search by | in-process, one at a time: q/s | p50 ms | p99 ms | served: clients | q/s | p50 ms | p99 ms | served / in-process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for what in ("embedding", "id"):
        a, b = big[f"in_process_{what}"], big[f"served_{what}"]
        lines.append(
            f"| {what} | {a['qps']:,} | {a['p50_ms']} | {a['p99_ms']} | {b['clients']} | {b['qps']:,} | {b['p50_ms']} | {b['p99_ms']} | {b['qps'] / a['qps']:.2f}x |"
        )
    lines += [
        "",
        f"Search by image (PNG upload, EfficientNet-Lite0 at {img['image_size']} px on the CPU, then the {img['n']:,}-item index), k = {img['k']}:",
        "",
        "| clients | one at a time: q/s | p50 ms | p99 ms | micro-batched: q/s | p50 ms | p99 ms | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in img["runs"]:
        a, b = r["one_at_a_time"], r["micro_batched"]
        lines.append(
            f"| {r['clients']} | {a['qps']} | {a['p50_ms']} | {a['p99_ms']} | {b['qps']} | {b['p50_ms']} | {b['p99_ms']} | {r['speedup']}x |"
        )
    a = big["add_1000"]
    lines += [
        "",
        f"`add` of 1,000 items to the 1M index (the commit: encode, commit file, fsyncs, manifest, new snapshot): "
        f"{', '.join(f'{s:.3f}' for s in a['seconds'])} s (median {a['median_s']:.3f} s); removing them {a['remove_1000_s']:.3f} s; "
        f"`compact` afterwards {a['compact_s']:.1f} s.",
        "",
    ]
    return lines + target_table(doc["targets"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    ap.add_argument("--n", type=int, default=1_000_000, help="items of the big index")
    ap.add_argument("--image-db", type=int, default=500, help="Fashion-MNIST items of the image index")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--image-clients", default="4,16", help="comma-separated client counts for image search")
    ap.add_argument("--seconds", type=float, default=15.0, help="time bound of each load phase")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)

    def measure(work: Path, log) -> dict:
        return {
            "big": bench_big(work, args.n, args.k, args.clients, args.seconds, log),
            "images": bench_images(
                work, args.image_db, args.k, [int(c) for c in args.image_clients.split(",")], args.seconds, log
            ),
        }

    record("serve_load.py", argv, measure, targets, render_markdown, args.out)


if __name__ == "__main__":
    main()
