"""Benchmark reports: quality, speed and memory of every method and index against float kNN.

``run_bench`` measures, for one pair of embedding files (database, queries):

- quality per method and code length: mAP@k, precision@k, precision within Hamming radius 2 and
  a precision–recall curve over Hamming radii, for symmetric Hamming ranking (ties by id) and the
  two re-ranking modes; float cosine as the reference;
- speed: queries/s and p50/p99 single-query latency of each index type (flat, IVF at several
  nprobe, the lookup table for 16-bit codes), float ``IndexFlatIP``, and Hamming + float re-rank,
  at the collection's size and on synthetic codes at larger scales; fit and build times;
- memory: bytes per item of the float vectors and, by faiss's own accounting, of the serialised
  flat index and its codes (``code_size × ntotal``), with the RSS growth of the index measured in
  a fresh process at scales where the index dominates the noise (:mod:`hashindex.measure.bench_memory`);
- pipeline speed (``pipeline_speed``): hashindex's embed, fit and query paths beside bare
  reference loops measured in the same run (:mod:`hashindex.measure.speed`).

Speeds are compared side by side in one run on one machine; the report names the machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hashindex.core.codes import unpack
from hashindex.core.config import PROTOCOL_TARGETS, BenchConfig, FitConfig, IndexConfig
from hashindex.core.errors import InputError
from hashindex.core.spec import check_same_backbone
from hashindex.measure.bench_seeds import LEARNED, asymmetric_row, seed_rows, worst_seed_map
from hashindex.measure.bench_speed import float_speed, speed_collection, speed_synthetic
from hashindex.measure.metrics import mean_average_precision, precision_at_k, relevance
from hashindex.probe.fit import fit_probe
from hashindex.search.asymmetric import rerank_asymmetric
from hashindex.search.engines import CodeIndex
from hashindex.search.exact import cosine_knn
from hashindex.search.ranking import hamming_search
from hashindex.search.rerank import FloatRows, rerank_float
from hashindex.store.reader import Embeddings

logger = logging.getLogger(__name__)

REPORT_VERSION = 1


def machine_info() -> dict:
    """CPU, cores, GPU and library versions of this machine."""
    import faiss
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
    }


def radius_curves(q_codes, db_codes, q_labels, db_labels, chunk: int = 512) -> dict:
    """Precision–recall over Hamming radii r = 0..B, and precision within radius 2.

    Precision at r averages, over the queries that retrieve anything within r, the fraction of
    hits among the items within r; a query that retrieves nothing counts 0 for "precision within
    radius 2" (the usual convention). Recall at r is the mean fraction of each query's relevant
    items within r.
    """
    import torch

    b = db_codes.shape[1] * 8
    sb = torch.from_numpy(unpack(db_codes).astype(np.float32) * 2 - 1)
    yb = torch.from_numpy(db_labels.astype(np.float32))
    ret = np.zeros((len(q_codes), b + 1))
    hit = np.zeros((len(q_codes), b + 1))
    for s in range(0, len(q_codes), chunk):
        sq = torch.from_numpy(unpack(q_codes[s : s + chunk]).astype(np.float32) * 2 - 1)
        dist = ((b - sq @ sb.T) / 2).round().long().numpy()
        rel = (torch.from_numpy(q_labels[s : s + chunk].astype(np.float32)) @ yb.T > 0).numpy()
        off = (np.arange(len(dist)) * (b + 1))[:, None]
        n = len(dist) * (b + 1)
        ret[s : s + chunk] = np.bincount((dist + off).ravel(), minlength=n).reshape(-1, b + 1)
        hit[s : s + chunk] = np.bincount((dist + off).ravel(), weights=rel.ravel(), minlength=n).reshape(-1, b + 1)
    ret_c, hit_c = ret.cumsum(1), hit.cumsum(1)
    total = np.maximum(hit_c[:, -1], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = hit_c / ret_c
    some = ret_c > 0
    precision = [float(prec[some[:, r], r].mean()) if some[:, r].any() else 0.0 for r in range(b + 1)]
    recall = (hit_c / total[:, None]).mean(0)
    p_r2 = float(np.where(some[:, 2], np.nan_to_num(prec[:, 2]), 0.0).mean())
    return {"precision": precision, "recall": [float(x) for x in recall], "precision_r2": p_r2}


def _quality(name, probe, xb, xq, yb, yq, rows, cfg, bar) -> tuple[list[dict], dict, CodeIndex, float]:
    """Quality rows of one probe (Hamming, float re-rank, asymmetric), its PR curve, its flat
    index and the seconds to encode the database and build that index."""
    t = time.perf_counter()
    db_codes = probe.encode(xb)
    index = CodeIndex.from_codes(db_codes, IndexConfig("flat"), probe=probe)
    build_s = time.perf_counter() - t
    q_logits = probe.logits(xq)
    q_codes = np.packbits(q_logits > 0, axis=1)
    k = min(cfg.topk, len(xb))
    _, ids = hamming_search(index, q_codes, k)
    rel = relevance(yq, yb, ids)
    curves = radius_curves(q_codes, db_codes, yq, yb)
    base = {"method": name, "bits": probe.bits}
    out = [
        dict(
            base,
            mode="hamming",
            nq=len(xq),
            map=mean_average_precision(rel),
            precision=precision_at_k(rel, cfg.topk),
            precision_r2=curves["precision_r2"],
        )
    ]
    # Re-ranking reads R·k float rows per query: measured on the first rerank_queries queries.
    sub = slice(0, min(cfg.rerank_queries, len(xq)))
    _, cand = hamming_search(index, q_codes[sub], min(cfg.rerank * k, len(xb)))
    for mode, (_, ids) in (
        (f"rerank-float-{cfg.rerank}", rerank_float(xq[sub], cand, rows, k)),
        (f"asymmetric-{cfg.rerank}", rerank_asymmetric(q_logits[sub], cand, db_codes, k)),
    ):
        rel = relevance(yq[sub], yb, ids)
        out.append(
            dict(
                base, mode=mode, nq=len(cand), map=mean_average_precision(rel), precision=precision_at_k(rel, cfg.topk)
            )
        )
    out.append(asymmetric_row(name, probe, db_codes, xq, yb, yq, k))
    bar.update(1)
    return out, {"precision": curves["precision"], "recall": curves["recall"]}, index, build_s


def run_bench(
    db: Embeddings,
    q: Embeddings,
    out_dir: str | os.PathLike,
    config: BenchConfig = BenchConfig(),
    *,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Measure everything and write ``report.json``, ``report.md`` and the plots into ``out_dir``.

    ``command`` (the command line that ran it) is recorded in the report.

    Raises:
        InputError: bad options, unlabelled files, embeddings of different backbones.
    """
    from tqdm.auto import tqdm

    config.validate()
    check_same_backbone(db.backbone, q.backbone, f"the database embeddings {db.path}", f"the queries {q.path}")
    yb, yq = db.labels(), q.labels()
    if yb is None or yq is None:
        raise InputError("bench measures quality on labels: both embedding files need labels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xb, xq = db.embeddings(), q.embeddings()
    rows = FloatRows(db.path)
    steps = 1 + len(config.methods) * len(config.bits) * 2 + len(config.scales) * len(config.bits)
    steps += len(set(config.seeds) - {config.seed}) * len(config.bits) * sum(m in LEARNED for m in config.methods)
    bar = tqdm(total=steps, desc="bench", unit="step", disable=not progress)
    report: dict = {
        "version": REPORT_VERSION,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "command": command,
        "config": asdict(config),
        "database": db.provenance(),
        "queries": q.provenance(),
        "quality": [],
        "pr_curves": {},
        "fit": [],
        "speed": [],
        "memory": [],
        "seeds": [],
        "synthetic_ivf": [],
        "kth_distance": [],
    }
    with tempfile.TemporaryDirectory(dir=out) as tmp:  # first: a bad --images fails before the long part
        from hashindex.measure.speed import measure_pipeline

        report["pipeline_speed"] = measure_pipeline(db, q, config, tmp)
    bar.update(1)
    k = min(config.topk, len(xb))
    t0 = time.perf_counter()
    _, fids = cosine_knn(xq, xb, k)
    float_s = time.perf_counter() - t0
    frel = relevance(yq, yb, fids)
    for n in sorted(
        {len(xq), min(config.rerank_queries, len(xq))}, reverse=True
    ):  # all queries, and the re-rank subset
        report["quality"].append(
            {
                "method": "float",
                "bits": 32 * xb.shape[1],
                "mode": "cosine",
                "nq": n,
                "map": mean_average_precision(frel[:n]),
                "precision": precision_at_k(frel[:n], config.topk),
            }
        )
    speed_index: dict[int, CodeIndex] = {}
    for bits in config.bits:
        for name in config.methods:
            fc = FitConfig(
                method="crovca" if name.startswith("crovca") else name,
                bits=bits,
                supervised=name == "crovca-sup",
                hashcoder=config.hashcoder,
                epochs=config.epochs,
                device=config.device,
                seed=config.seed,
                targets=config.targets,
            )
            t = time.perf_counter()
            probe = fit_probe(db, fc, progress=False)
            fit_s = time.perf_counter() - t
            bar.update(1)
            rows_q, curve, index, build_s = _quality(name, probe, xb, xq, yb, yq, rows, config, bar)
            report["fit"].append({"method": name, "bits": bits, "fit_seconds": fit_s, "build_seconds": build_s})
            report["quality"] += rows_q
            if name in LEARNED and config.seeds:
                maps = {r["mode"]: r["map"] for r in rows_q if r["mode"] in ("hamming", "asymmetric")}
                report["seeds"] += seed_rows(db, fc, name, config.seeds, config.seed, maps, xb, xq, yb, yq, k, bar)
            report["pr_curves"][f"{name}-{bits}"] = curve
            if name == "crovca" or (name == config.methods[0] and bits not in speed_index):
                speed_index[bits] = index
    report["speed"].append(dict(float_speed(xb, xq, config), n=len(xb), scope="collection"))
    for bits, index in speed_index.items():
        for r in speed_collection(index, index.probe.encode(xq), xq, yq, yb, rows, config, report["kth_distance"]):
            report["speed"].append(dict(r, n=len(xb), scope="collection"))
        report["memory"].append(
            {"bits": bits, "code_bytes_per_item": bits / 8, "float_bytes_per_item": 4 * xb.shape[1]}
        )
    rows.close()
    rng = np.random.default_rng(config.seed)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for n in config.scales:
            for r in speed_synthetic(
                n, xb.shape[1], config, rng, Path(tmp), bar, report["synthetic_ivf"], report["kth_distance"]
            ):
                report["speed"].append(dict(r, scope="synthetic"))
    bar.close()
    report["float_cosine_seconds"] = float_s
    report["targets"] = targets(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    from hashindex.measure.plots import write_plots
    from hashindex.measure.report import render_markdown

    plots = write_plots(report, out)
    (out / "report.md").write_text(render_markdown(report, plots))
    return report


def _find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def targets(report: dict) -> list[dict]:
    """The speed/quality targets of the project, each marked met or missed (None: not measured)."""
    sp, out = report["speed"], []
    r = report["config"]["rerank"]

    def add(name, value, threshold, unit="x", at_most=False):
        met = None if value is None else (value <= threshold if at_most else value >= threshold)
        row = {"target": name, "value": value, "threshold": threshold, "unit": unit, "met": met}
        out.append(dict(row, at_most=True) if at_most else row)

    fl = _find(sp, kind="float-IndexFlatIP", scope="synthetic", n=1_000_000)
    b64 = _find(sp, kind="flat", scope="synthetic", n=1_000_000, bits=64)
    add(
        "binary flat 64 bits vs float IndexFlatIP, 1M items (QPS ratio)",
        b64["qps"] / fl["qps"] if fl and b64 else None,
        25,
    )
    m64 = _find(sp, kind="mih", scope="synthetic", n=1_000_000, bits=64)
    add(
        "exact mih 64 bits vs float IndexFlatIP, 1M items (QPS ratio)",
        m64["qps"] / fl["qps"] if fl and m64 else None,
        40,
    )
    f16, l16 = (
        _find(sp, kind="flat", scope="synthetic", n=1_000_000, bits=16),
        _find(sp, kind="lookup", scope="synthetic", n=1_000_000, bits=16),
    )
    add(
        "16-bit lookup vs faiss IndexBinaryFlat, 1M items (QPS ratio)",
        l16["qps"] / f16["qps"] if f16 and l16 else None,
        5,
    )
    # Exact multi-index hashing against the scan, single queries (mean latency, as a single-query
    # throughput sees it); the automatic choice against the best exact kind; filters.
    for n, bits, want in ((1_000_000, 64, 10), (1_000_000, 128, 3), (100_000_000, 64, 100)):
        fl_, mi_ = (
            _find(sp, kind="flat", scope="synthetic", n=n, bits=bits),
            _find(sp, kind="mih", scope="synthetic", n=n, bits=bits),
        )
        if n == 1_000_000 or (fl_ and mi_):
            add(
                f"mih vs faiss IndexBinaryFlat, {n / 1e6:.0f}M clustered {bits}-bit codes, single queries "
                "(mean latency ratio)",
                fl_["mean_ms"] / mi_["mean_ms"] if fl_ and mi_ and "mean_ms" in fl_ else None,
                want,
            )
    for a in (x for x in sp if x["kind"] == "auto" and x.get("ratio_to_best") is not None):
        add(
            f"auto ({a['chosen']}) vs the best exact kind ({a['best_kind']}), {a['scope']} {a['n']:,} x "
            f"{a['bits']} bits (mean latency ratio, at most)",
            a["ratio_to_best"],
            1.5,
            at_most=True,
        )
    for f in (x for x in sp if x["kind"] == "mih+filter" and x["selectivity"] == 0.001 and x["scope"] == "synthetic"):
        add(
            f"mih filtered to 0.1% vs unfiltered, {f['n']:,} x {f['bits']} bits (mean latency ratio, at most)",
            f["ratio_to_unfiltered"],
            3,
            at_most=True,
        )
    rq = _find(report["quality"], method="crovca", bits=64, mode=f"rerank-float-{r}")
    fq = _find(report["quality"], method="float", nq=rq["nq"]) if rq else None
    add(
        f"Hamming top-{r}k + float re-rank mAP vs float mAP on the same queries, 64 bits (%)",
        100 * rq["map"] / fq["map"] if rq and fq else None,
        99,
        "%",
    )
    rr = _find(sp, kind=f"auto+rerank-float-{r}", scope="synthetic", n=1_000_000)
    add(
        f"Hamming top-{r}k (the automatic index, clustered codes) + float re-rank vs float IndexFlatIP, 1M items (QPS ratio)",
        rr["qps"] / fl["qps"] if rr and fl else None,
        10,
    )
    for iv in [x for x in report.get("synthetic_ivf", []) if x["bits"] == 64 and x["n"] >= 100_000_000]:
        add(
            f"IVF at recall@{iv['k']} >= 0.95 vs flat, {iv['n'] / 1e6:.0f}M clustered 64-bit codes (QPS ratio)",
            iv["speedup"],
            10,
        )
    q = report["quality"]
    # The quality thresholds belong to the full Fashion-MNIST protocol (60k database, 10k queries).
    src = report["database"].get("source") or {}
    protocol = (
        src.get("kind") == "fashion-mnist" and report["database"]["n"] == 60_000 and report["queries"]["n"] == 10_000
    )
    seeds = (
        "minimum over seeds " + ",".join(map(str, report["seeds"][0]["seeds"]))
        if report.get("seeds")
        else "default seed"
    )
    for m, per_bits in PROTOCOL_TARGETS.items() if protocol else ():  # other collections: none apply
        for b, lo in per_bits.items():
            v = worst_seed_map(report, m, b)
            add(f"{m} mAP@{report['config']['topk']} at {b} bits, {seeds} (%)", None if v is None else 100 * v, lo, "%")
    for m in ("crovca", "crovca-sup"):
        for b in report["config"]["bits"]:
            row, itq = _find(q, method=m, bits=b, mode="hamming"), _find(q, method="itq", bits=b, mode="hamming")
            if row and itq:
                add(f"{m} minus ITQ mAP at {b} bits (points)", 100 * (row["map"] - itq["map"]), 0, "pt")
    for m in (x for x in sp if x["kind"] == "flat" and x.get("scope") == "synthetic"):
        limit = 1.1 * (m["bits"] / 8 + 8)
        val = max(v for v in (m["index_bytes_per_item"], m.get("ram_bytes_per_item")) if v is not None)
        out.append(
            {
                "target": f"flat index memory, {m['bits']} bits, {m['n']:,} items (bytes/item, at most {limit:.1f})",
                "value": val,
                "threshold": limit,
                "unit": "B",
                "met": val <= limit,
            }
        )
    return out
