"""BENCHMARKS.md sections of the later benchmarks (exact search, near-duplicates, a folder of one's
own photos, the training length on small collections), each rendered from its results file by the
benchmark's own renderer. ``collect.py`` appends them; a missing results file leaves its section out.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def render_mih(results: Path) -> list[str]:
    from mih import markdown
    from mih_tables import render as render_tables

    doc = _load(results / "mih.json")
    if doc is None:
        return []
    lines = [
        "## Exact search faster than a scan: multi-index hashing, auto, filters",
        "",
        "`benchmarks/mih.py` (results: `mih.json`; runs of earlier code: `mih_20261203*.json`, "
        "`mih_20261204_row_major.json`, `mih_20261204_turns_of_queries.json`). The targets are judged on the "
        "kinds taking turns of 0.5 s of fresh queries each: with turns of 25 queries, mih's first queries after "
        "a scan of 800 MB (100M x 64) refill the caches the scan emptied, which a service answering mih queries "
        "does not see; both are in the table.",
        "",
        markdown(doc),
    ]
    extra = (
        (
            "mih_20261204_turns_of_queries.json",
            "The code before the gathered bucket positions (`mih_20261204_turns_of_queries.json`)",
            "The kernel that tested every code of a bucket with a code within the k-th distance, and the "
            "benchmark before its turns of time (targets then judged on turns of 25 queries).",
        ),
        (
            "mih_20261204_100m_second_run.json",
            "The 100M collection again, same earlier code (`mih_20261204_100m_second_run.json`)",
            "Run later for the spread of the 100M figure taking turns of 25 queries with the scan (its mean "
            "is the tail's: every mih query follows a scan of 800 MB).",
        ),
        (
            "mih_fmnist60k.json",
            "Real codes: the full Fashion-MNIST index",
            "The 60,000 training images and the 10,000 test images as queries (one view each, 112 px, "
            "EfficientNet-Lite0), encoded by the CroVCA probes of the row above (fitted on the first 10,000 "
            "training images, seed 0); latency over the first queries, distances checked against faiss on all "
            "10,000.",
        ),
    )
    for name, title, text in extra:
        more = _load(results / name)
        if more is not None:
            lines += ["", f"### {title}", "", text, "", markdown(more)]
    tables = _load(results / "mih_tables.json")
    if tables is not None:
        lines += ["", "Command of the table sweep: `benchmarks/mih_tables.py` (results: `mih_tables.json`).", ""]
        lines += ["#" + line if line.startswith("## ") else line for line in render_tables(tables)]
    return lines


DEDUP_NOTES = {  # what code a speed run measured, where it is not the code of its day's end
    "dedup_speed_1m_r10_20261204_before_skip.json": "The range join before its counting skip (commit 006afe8), "
    "run minutes before the next file's run.",
    "dedup_speed_1m_r10_20261204_skip.json": "With the counting skip in the range join, before the faster pair sort "
    "and grouping.",
    "dedup_speed_1m_20261204.json": "Counting skip, one-key pair sort, bincount grouping, before a self-join's "
    "probes start at the bucket's later rows; the machine's speed varies by tens of percent between runs.",
    "dedup_speed_1m_20261204_later_rows.json": "The self-join's probes start at the first row of a bucket past the "
    "querying row (binary search: a bucket's rows ascend), so each pair is looked at from one side.",
    "dedup_speed_1m_r10_20261204_later_rows.json": "The same code, the default radius alone, run again later.",
    "dedup_speed_10m_20261204_later_rows.json": "The same code at 10M codes, the join stopped early and extrapolated "
    "(the lower figure in proportion to the pairs, the higher to the rows; the lower one added to the file after "
    "the run, from its recorded join time and rows).",
    "dedup_speed_1m_bucket_join.json": "The bucket join (each table's buckets joined with the buckets within their "
    "substring radius, code against code; the last table probed one substring bit less where the radius allows), "
    "the code of today.",
    "dedup_speed_10m_bucket_join.json": "The bucket join at 1M and 10M codes whose clusters keep the 1M run's size "
    "(4,096 centres per million codes): 10x the codes, 10x the pairs. With the 4,096 centres of the earlier 10M runs, "
    "clusters grow tenfold and so do the pairs per code: ~1.7 billion pairs at this radius, ~35 GB held, beyond this "
    "machine's 24 GiB. Run before the join let go of its parts ahead of its final sort (peak RSS) and before "
    "its buffers were bounded at 1M pairs per unit (a more crowded unit is asked again alone).",
}


def _radius_cost(results: Path) -> str:
    """How much slower the 1M join is at the next radius on the grid, from the latest speed run of both."""
    doc = _load(results / "dedup_speed_1m_bucket_join.json")
    rows = {r["radius_bits"]: r for r in (doc or {}).get("speed", []) if r["n"] == 1_000_000}
    if 10 not in rows or 12 not in rows:
        return ""
    a, b = rows[10]["dedup_seconds"], rows[12]["dedup_seconds"]
    pairs = rows[12]["pairs"] / rows[10]["pairs"]
    return (
        f": {pairs:.1f}x the candidate pairs and {b / a:.1f}x the time of 1M codes' dedup ({b} s against {a} s, "
        "`dedup_speed_1m_bucket_join.json`)"
    )


def render_dedup(results: Path) -> list[str]:
    from dedup_report import table

    summary = _load(results / "dedup_summary.json")
    files = sorted(results.glob("dedup_fmnist_*.json")) + sorted(results.glob("dedup_speed_*.json"))
    if summary is None and not files:
        return []
    lines = ["## Near-duplicates: `hashindex dedup`", ""]
    if summary is not None:
        by_bits = ", ".join(f"{v} at {b} bits" for b, v in summary.get("radius_by_bits", {}).items())
        lines += [
            f"Thresholds across the quality runs (`benchmarks/dedup.py --summarize ...`): `min_cosine` "
            f"{summary['min_cosine']} (the smallest float-cosine threshold reaching precision "
            f">= {summary['min_precision']} on pairs and groups in every run), `min_pixels` {summary.get('min_pixels')} "
            "(the smallest pixel-agreement threshold that, with that cosine, still reaches it in every run); radius: "
            f"the smallest fraction of the code length keeping >= {summary['min_ratio']} of the recall of cosine or "
            f"pixels over all pairs at those thresholds, in every run: {summary['radius']} over every code length, "
            f"{by_bits}. The default radius is 64-bit codes' (the default length), 0.15625; the next radius on "
            f"the grid at 64 bits (12 bits) keeps more recall at a cost{_radius_cost(results)}.",
            "",
            "| radius (fraction of bits) | worst share of the recall of cosine or pixels over all pairs |",
            "|---|---|",
            *(f"| {k} | {v['min_ratio']:.3f} |" for k, v in summary["by_radius"].items()),
        ]
    for f in files:
        doc = json.loads(f.read_text())
        args = SimpleNamespace(**doc["args"])
        lines += [
            "",
            f"### `{f.name}`",
            "",
            f"Command: `{doc['command']}`; {doc['date']}; {doc['cpu']}; wall {doc['wall_seconds']:.0f} s."
            + (f" {DEDUP_NOTES[f.name]}" if f.name in DEDUP_NOTES else ""),
            "",
            table(doc, args),
        ]
    return lines


def render_own_folder(results: Path) -> list[str]:
    doc = _load(results / "own_folder.json")
    if doc is None:
        return []
    lines = [
        "## A folder of one's own photos",
        "",
        f"`.venv/bin/python benchmarks/own_folder.py`; {doc['date']}; {doc['machine']}. Photos cut from "
        "scikit-image's sample pictures at mixed sizes up to 1600x1200 (JPEG).",
    ]
    mem = doc.get("embed_memory")
    if mem:
        lines += [
            "",
            "`embed --views 2 --image-size 224`, each setting in a fresh process:",
            "",
            "| batch | images | seconds | images/s | peak RSS MiB (main process) | peak RSS MiB (decoding worker) "
            "| peak PSS MiB (all processes, 0.2 s samples) |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {label} | {r['images']:,} | {r['seconds']:.0f} | {r['images_per_s']:.1f} | "
                f"{r['peak_rss_mb']:.0f} | {r['worker_peak_rss_mb']:.0f} | {r.get('peak_total_pss_mb', 0):.0f} |"
                for label, r in mem.items()
            ),
        ]
    ans = doc.get("folder_to_answer")
    if ans:
        lines += [
            "",
            f"`hashindex {ans['command']}` on {ans['images']:,} photos: the page's first search answered after "
            f"{ans['seconds']:.0f} s ({ans['kind']} index; target: 180 s).",
        ]
    return lines


def render_schedule(results: Path) -> list[str]:
    from schedule import markdown

    doc = _load(results / "schedule_small.json")
    if doc is None:
        return []
    return [
        "## Training length on small collections",
        "",
        "`benchmarks/schedule.py` (results: `schedule_small.json`): mAP@100 of CroVCA by the floor of optimiser "
        "steps (`FitConfig.min_steps`), against ITQ and float cosine, on collections of 800-4,000 items and "
        "database subsets of 100-1,000. The fits were made by runs of the script over the same cache (each fit "
        "kept in its `runs.jsonl`, a re-run skipping what is there); the command below summarised them.",
        "",
        markdown(doc),
    ]


def _kind(row: dict) -> str:
    return row["kind"] + (f" ({row['selectivity']:.1%} allowed)" if "selectivity" in row else "")


def render_bench_speed(results: Path) -> list[str]:
    """The bench's synthetic 1M speed rows from a run with the exact kinds of today (mih, auto)."""
    doc = _load(results / "bench_speed_1m.json")
    if doc is None:
        return []
    m = doc["machine"]
    rows = [r for r in doc["speed"] if r.get("scope") == "synthetic" and "qps" in r]
    lines = [
        "## The bench's speed rows at 1M items, with multi-index hashing",
        "",
        f"`{doc['command']}`; {doc['date']}; {m['cpu']}, {m['cores']} cores; faiss {m['faiss']}. Clustered synthetic "
        "64-bit codes (random float vectors of the database's dimension for IndexFlatIP); throughput: all queries "
        "in one call (every core), latency: single queries.",
        "",
        "| kind | bits | items | queries/s | p50 ms | mean ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {_kind(r)} | {r.get('bits', '–')} | {r['n']:,} | {r['qps']:,.0f} | {r['p50_ms']:.3f} | "
            f"{r.get('mean_ms', float('nan')):.3f} |"
            for r in rows
        ),
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(
            f"| {t['target']} (needs {'at most' if t.get('at_most') else 'at least'} {t['threshold']}) | "
            f"{t['value']:.2f} | {'met' if t['met'] else 'MISSED'} |"
            for t in doc["targets"]
            if t["value"] is not None and ("1M items" in t["target"] or "vs float" in t["target"])
        ),
    ]
    return lines


def render_all(results: Path) -> list[str]:
    lines = []
    for part in (render_mih, render_bench_speed, render_dedup, render_own_folder, render_schedule):
        section = part(results)
        if section:
            lines += [""] + section
    return lines
