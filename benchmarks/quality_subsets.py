"""Quality across seeds on Fashion-MNIST subsets: keep `hashindex bench --seeds` reports as JSON
under results/ and render their section of BENCHMARKS.md (collect.py calls :func:`render`).

    .venv/bin/python benchmarks/quality_subsets.py NAME REPORT_DIR [NAME REPORT_DIR ...]
        # copies each report into results/subset_NAME.json, then re-renders BENCHMARKS.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KEEP = ("version", "date", "machine", "command", "config", "database", "queries", "quality", "seeds", "fit", "targets")


def keep(name: str, report_dir: Path) -> None:
    """The quality parts of a bench report (no PR curves, no synthetic speeds) as results/subset_NAME.json."""
    report = json.loads((report_dir / "report.json").read_text())
    doc = {k: report.get(k) for k in KEEP}
    doc["ivf"] = [s for s in report["speed"] if s.get("recall") is not None]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"subset_{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _q(doc: dict, method: str, bits: int, mode: str = "hamming") -> dict | None:
    nq = max(r["nq"] for r in doc["quality"])
    return next(
        (
            r
            for r in doc["quality"]
            if r["method"] == method and r["bits"] == bits and r["mode"] == mode and r["nq"] == nq
        ),
        None,
    )


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def subset_targets(doc: dict) -> list[str]:
    """The subset targets of the quality work, checked on whichever figures this report holds."""
    out, n = [], doc["database"]["n"]
    seeds = {(r["method"], r["bits"], r["mode"]): r for r in doc.get("seeds") or []}
    fl = next(r for r in doc["quality"] if r["method"] == "float" and r["nq"] == doc["queries"]["n"])
    for b in (32, 64):
        s = seeds.get(("crovca-sup", b, "hamming"))
        if s and n == 5000:
            ok = s["min"] >= 0.80 and s["max"] - s["min"] <= 0.02
            out.append(
                f"supervised {b} bits, seeds {s['seeds']}: min {_pct(s['min'])} (≥ 80), spread {100 * (s['max'] - s['min']):.1f} (≤ 2) → **{'met' if ok else 'MISSED'}**"
            )
    s = seeds.get(("crovca", 64, "hamming"))
    if s and n == 5000:
        first3 = [m for sd, m in zip(s["seeds"], s["maps"]) if sd in (0, 1, 2)]
        mean3 = sum(first3) / len(first3)
        out.append(
            f"unsupervised 64 bits, mean of seeds 0–2: {_pct(mean3)} (≥ 62.5) → **{'met' if mean3 >= 0.625 else 'MISSED'}**"
        )
    itq = _q(doc, "itq", 64)
    if s and itq and n == 2000:
        worst = s["min"]
        ok = worst >= itq["map"] + 0.03 and worst >= fl["map"]
        out.append(
            f"2,000 images, 64 bits: CroVCA min over seeds {s['seeds']} {_pct(worst)} against ITQ {_pct(itq['map'])} + 3 "
            f"and float {_pct(fl['map'])} → **{'met' if ok else 'MISSED'}**"
        )
    return out


def render() -> list[str]:
    """Markdown lines of the section (empty when no subset report was kept)."""
    from hashindex.measure.report import describe_machine

    files = sorted(RESULTS.glob("subset_*.json"))
    if not files:
        return []
    L = [
        "## Quality across seeds on Fashion-MNIST subsets",
        "",
        "Database = the first N training images (2 cached views), queries = the first 1,000 test images,",
        "112 px, bilinear; `hashindex embed fashion-mnist db.h5 --split train --limit N --views 2 --image-size 112 "
        "--interpolation bilinear` and `... q.h5 --split test --limit 1000 --image-size 112 --interpolation bilinear`.",
        "mAP@1000 (%): Hamming = symmetric Hamming ranking (what the index serves); asymmetric = the whole database",
        "ranked by the query's sigmoid(logits) against the items' bits (the CroVCA paper's figure). CroVCA with the",
        "defaults of the time unless the command says otherwise (automatic schedule: at least 1,000 optimiser steps; supervised",
        "targets from the class codebook). The full protocol (60,000 / 10,000 images, seeds 0–4) is in the bench",
        'report\'s "Quality across seeds" above.',
        "For comparison, the paper's prototype targets on this subset gave 74.2 / 76.0 / 79.1 / 78.2 / 65.0 (figures from the issue, not re-measured)",
        "at 32 bits, seeds 0–4, with the old 5-epoch schedule, and 71.8 at seed 4 with the new schedule (table below).",
    ]
    for f in files:
        doc = json.loads(f.read_text())
        fl = next(r for r in doc["quality"] if r["method"] == "float" and r["nq"] == doc["queries"]["n"])
        L += [
            "",
            f"### {doc['database']['n']:,} database images: `{f.name}`",
            "",
            f"Command: `{doc['command']}`; {doc['date']}, 2-core Intel Xeon, no GPU (shared; the run reports "
            f"{describe_machine(doc['machine'])}). Float cosine: {_pct(fl['map'])}.",
            "",
            "| method | bits | ranking | default seed | mean | min | std | per seed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in doc.get("seeds") or []:
            L.append(
                f"| {r['method']} | {r['bits']} | {r['mode']} | {_pct(r['default'])} | {_pct(r['mean'])} | {_pct(r['min'])} | "
                f"{100 * r['std']:.2f} | {', '.join(_pct(x) for x in r['maps'])} (seeds {','.join(map(str, r['seeds']))}) |"
            )
        for r in doc["quality"]:
            if r["method"] not in ("float", "crovca", "crovca-sup") and r["mode"] in ("hamming", "asymmetric"):
                L.append(f"| {r['method']} | {r['bits']} | {r['mode']} | {_pct(r['map'])} | | | | |")
        fits = [x["fit_seconds"] for x in doc["fit"] if x["method"].startswith("crovca")]
        if fits:
            L += ["", f"CroVCA fit time at the default seed: {min(fits):.0f}–{max(fits):.0f} s (shared 2-core CPU)."]
        if doc.get("ivf"):
            L += [
                "",
                f"IVF (default nlist): recall of the flat top-{doc['ivf'][0]['k']} by id / counting equal distances, queries that got all k back, mAP (only where all did):",
                "",
            ]
            L += [
                f"- {s['bits']} bits, {s['kind']}: {_pct(s['recall'])} / {_pct(s['recall_ties'])}, {_pct(s['complete'])}, {_pct(s['map'])}"
                for s in doc["ivf"]
            ]
        t = subset_targets(doc)
        if t:
            L += ["", "Targets:", ""] + [f"- {x}" for x in t]
    return L + render_grid()


def render_grid() -> list[str]:
    """The fit_grid.py measurements (results/fit_grid_fmnist_subsets.json), one row per option set."""
    f = RESULTS / "fit_grid_fmnist_subsets.json"
    if not f.exists():
        return []
    doc = json.loads(f.read_text())
    groups: dict[tuple, dict] = {}
    for r in doc["rows"]:
        opts = {k: v for k, v in r.items() if k in doc["option_keys"] and k != "seed"}
        key = (r["n"], json.dumps(opts, sort_keys=True))
        groups.setdefault(key, {})[r.get("seed", 0)] = r
    L = [
        "",
        "### What the fixes were chosen on (fit_grid.py)",
        "",
        doc["note"],
        "",
        "| database | options | steps | Hamming mAP per seed | mean | min | asymmetric mean | mean bit correlation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (n, opts), by_seed in sorted(groups.items()):
        rows = [by_seed[s] for s in sorted(by_seed)]
        h = [r["hamming"] for r in rows]
        steps = rows[0].get("schedule") or {}
        corr = [r["bit_corr_mean"] for r in rows if r.get("bit_corr_mean") is not None]
        asym = [r["asymmetric"] for r in rows if r.get("asymmetric") is not None]
        L.append(
            f"| {n:,} | `{opts}` | {steps.get('steps', '–')} | {', '.join(f'{sd}: {100 * x:.1f}' for sd, x in zip(sorted(by_seed), h))} | "
            f"{100 * np.mean(h):.1f} | {100 * min(h):.1f} | {f'{100 * np.mean(asym):.1f}' if asym else '–'} | {f'{np.mean(corr):.3f}' if corr else '–'} |"
        )
    return L


def main(argv: list[str]) -> None:
    if len(argv) % 2:
        sys.exit(__doc__)
    for name, d in zip(argv[::2], argv[1::2]):
        keep(name, Path(d))
    sys.path.insert(0, str(HERE))
    from collect import main as collect_main

    collect_main([])


if __name__ == "__main__":
    main(sys.argv[1:])
