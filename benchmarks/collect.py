"""Render BENCHMARKS.md from the JSON files under benchmarks/results/, after optionally collecting
new results into them.

    .venv/bin/python benchmarks/collect.py                          # render only
    .venv/bin/python benchmarks/collect.py runs/fmnist              # + the fashion_mnist.sh run
    .venv/bin/python benchmarks/collect.py --bench runs/fmnist/bench  # + a `hashindex bench` report
    .venv/bin/python benchmarks/collect.py --seeds runs/fmnist/bench-seed1 runs/fmnist/bench-seed2
        # + CroVCA at other seeds (bench reports run with --methods crovca,crovca-sup --seed N)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hashindex.core.config import METHOD_NAMES, PROTOCOL_TARGETS
from hashindex.index.manifest import Manifest

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHOD_ORDER = list(METHOD_NAMES)
TARGETS = PROTOCOL_TARGETS


def collect(run_dir: Path) -> dict:
    import h5py

    from hashindex.measure.bench import machine_info

    runs = {}
    for f in sorted((run_dir / "results").glob("*.json")):
        r = json.loads(f.read_text())
        probe = json.loads((run_dir / "probes" / f.stem / "probe.json").read_text())
        manifest, _ = Manifest.read(run_dir / "indexes" / f.stem)
        r["fit_seconds"] = probe["meta"]["fit_seconds"]
        r["fit_device"] = probe["config"].get("device")
        r["bit_balance_mean"] = probe["meta"]["bit_balance"]["mean"]
        r["build_seconds"] = manifest.build_seconds
        r.pop("index", None), r.pop("queries", None)
        runs[f.stem] = r
    embeddings = {}
    for name in ("db.h5", "q.h5"):
        with h5py.File(run_dir / name, "r") as h:
            n, views = h["embeddings"].shape[0], (h["views"].shape[1] if "views" in h else 0)
            secs = h.attrs.get("embed_seconds")
            embeddings[name] = {
                "n": int(n),
                "views": int(views),
                "image_size": json.loads(h.attrs["backbone"])["image_size"],
                "embed_seconds": None if secs is None else float(secs),
                "images_per_second": None if secs is None else n * (1 + views) / float(secs),
                "device": h.attrs.get("device"),
            }
    doc = {
        "protocol": "fashion-mnist: 60k train (2 views) as database, 10k test as queries, "
        "tf_efficientnet_lite0 packaged ImageNet weights, 112 px, mAP@1000, symmetric Hamming, ties by id",
        "command": "bash benchmarks/fashion_mnist.sh",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "embeddings": embeddings,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fashion_mnist.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def render_fashion_mnist(doc: dict) -> list[str]:
    from hashindex.measure.report import describe_machine

    runs = doc["runs"]
    bits = sorted({r["bits"] for r in runs.values()})
    out = [
        "## Fashion-MNIST protocol",
        "",
        f"{doc['protocol']}.",
        f"Command: `{doc['command']}` (then `.venv/bin/python benchmarks/collect.py runs/fmnist`). "
        f"Date: {doc['date']}. Machine: {describe_machine(doc['machine'])}.",
        "",
        "mAP@1000 (%):",
        "",
        "| method | " + " | ".join(f"{b} bits" for b in bits) + " |",
        "|---|" + "---|" * len(bits),
    ]
    fl = next((r["float_map"] for r in runs.values() if r.get("float_map") is not None), None)
    if fl is not None:
        out.append("| float cosine, 1280-d | " + " | ".join(f"{100 * fl:.1f}" for _ in bits) + " |")
    for m in METHOD_ORDER:
        cells = [f"{100 * runs[f'{m}-{b}']['map']:.1f}" if f"{m}-{b}" in runs else "–" for b in bits]
        if any(c != "–" for c in cells):
            out.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    out += ["", "Targets (met / missed):", ""]
    for m, per_bits in TARGETS.items():
        for b, lo in per_bits.items():
            r = runs.get(f"{m}-{b}")
            got = "not run" if r is None else f"{100 * r['map']:.1f} → {'met' if 100 * r['map'] >= lo else 'MISSED'}"
            out.append(f"- {METHOD_NAMES[m]} at {b} bits ≥ {lo:.0f}: {got}")
    for m in ("crovca", "crovca-sup"):
        for b in bits:
            r, itq = runs.get(f"{m}-{b}"), runs.get(f"itq-{b}")
            if r and itq:
                ok = r["map"] >= itq["map"]
                out.append(
                    f"- {METHOD_NAMES[m]} ≥ ITQ at {b} bits: {100 * r['map']:.1f} vs {100 * itq['map']:.1f} → {'met' if ok else 'MISSED'}"
                )
    out += ["", "Fit time per probe (s) and search speed of the flat index (10k queries, k = 1000):", ""]
    out += ["| method | bits | fit s | build s | queries/s | bit balance |", "|---|---|---|---|---|---|"]
    for m in METHOD_ORDER:
        for b in bits:
            r = runs.get(f"{m}-{b}")
            if r:
                out.append(
                    f"| {METHOD_NAMES[m]} | {b} | {r['fit_seconds']:.1f} | {r['build_seconds']:.2f} | {r['search_qps']:,.0f} | {r['bit_balance_mean']:.3f} |"
                )
    emb = doc["embeddings"]
    out += ["", "Embedding:", ""]
    for name, e in emb.items():
        speed = (
            "not recorded"
            if e["images_per_second"] is None
            else f"{e['images_per_second']:,.0f} images/s ({e['embed_seconds']:.0f} s, {e['device']})"
        )
        out.append(f"- {name}: {e['n']:,} images × (1 + {e['views']} views) at {e['image_size']} px: {speed}")
    fr = next((r for r in runs.values() if r.get("float_qps")), None)
    if fr:
        out.append(f"- float cosine kNN (exact, torch matmul) on the same queries: {fr['float_qps']:,.0f} queries/s")
    return out


def collect_bench(report_dir: Path, note: str | None = None) -> None:
    """Copy a bench report's JSON into results/ (with ``note``, the run's circumstances, when given)
    and its plots into docs/ (for the README)."""
    import shutil

    RESULTS.mkdir(exist_ok=True)
    report = json.loads((report_dir / "report.json").read_text())
    if note:
        report["note"] = note
    (RESULTS / "bench_fashion_mnist.json").write_text(json.dumps(report, indent=1) + "\n")
    docs = HERE.parent / "docs"
    docs.mkdir(exist_ok=True)
    for png in report_dir.glob("*.png"):
        shutil.copyfile(png, docs / png.name)


def _hamming_maps(report: dict) -> dict[tuple[str, int], float]:
    nq = max(r["nq"] for r in report["quality"])
    return {(r["method"], r["bits"]): r["map"] for r in report["quality"] if r["mode"] == "hamming" and r["nq"] == nq}


def collect_seeds(report_dirs: list[Path]) -> None:
    """Keep the CroVCA mAP of bench reports run with other seeds (the main report is seed 0)."""
    if not report_dirs:
        sys.exit("--seeds needs at least one bench report folder")
    rows = []
    for d in report_dirs:
        report = json.loads((d / "report.json").read_text())
        for (m, b), v in sorted(_hamming_maps(report).items()):
            if m.startswith("crovca"):
                rows.append({"method": m, "bits": b, "seed": report["config"]["seed"], "map": v})
        doc = {"command": report.get("command"), "date": report["date"], "machine": report["machine"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seeds_fashion_mnist.json").write_text(json.dumps({**doc, "rows": rows}, indent=1) + "\n")


def render_seeds(seeds: dict, main: dict) -> list[str]:
    """CroVCA's spread over seeds: the main report's seed and the other seeds' reports."""
    from hashindex.measure.report import describe_machine

    maps = {(m, b, main["config"]["seed"]): v for (m, b), v in _hamming_maps(main).items()}
    maps.update({(r["method"], r["bits"], r["seed"]): r["map"] for r in seeds["rows"]})
    all_seeds = sorted({s for _, _, s in maps})
    out = [
        "## CroVCA across seeds",
        "",
        "The protocol figures above come from one probe seed; here the same embeddings with other seeds",
        "(`--seed`; the seed draws the HashCoder's initial weights and the batches). Command of the "
        f"last other seed: `{seeds['command']}`; {seeds['date']}, {describe_machine(seeds['machine'])}.",
        "",
        "| method | bits | " + " | ".join(f"seed {s}" for s in all_seeds) + " | mean | min |",
        "|---|---|" + "---|" * (len(all_seeds) + 2),
    ]
    for m in ("crovca", "crovca-sup"):
        for b in sorted({b for mm, b, _ in maps if mm == m}):
            vals = [maps.get((m, b, s)) for s in all_seeds]
            got = [v for v in vals if v is not None]
            cells = ["–" if v is None else f"{100 * v:.1f}" for v in vals]
            out.append(
                f"| {METHOD_NAMES[m]} | {b} | "
                + " | ".join(cells)
                + f" | {100 * sum(got) / len(got):.1f} | {100 * min(got):.1f} |"
            )
    return out


def render() -> str:
    from hashindex.measure.report import render_markdown

    lines = [
        "# Benchmarks",
        "",
        "Every figure below is rendered from the JSON files in `benchmarks/results/` by",
        "`.venv/bin/python benchmarks/collect.py`; each file records its command, machine and date.",
        "",
        "Fashion-MNIST protocol: database = the 60,000 training images with 2 cached",
        "augmented views each, queries = the 10,000 test images, EfficientNet-Lite0 with its packaged",
        "ImageNet weights at 112 px (timm's eval transform, bilinear resizing), made with",
        "`hashindex embed fashion-mnist db.h5 --split train --views 2 --image-size 112 --interpolation bilinear` and",
        "`hashindex embed fashion-mnist q.h5 --split test --image-size 112 --interpolation bilinear`; CroVCA with the defaults",
        "(small HashCoder, at least 1,000 optimiser steps: 5 epochs here, batch 256, seed 0). Speeds are from one run on one",
        "machine, side by side; the synthetic rows use clustered random codes (`hashindex/synthetic.py`) and Gaussian float vectors.",
        "",
    ]
    f = RESULTS / "fashion_mnist.json"
    if f.exists():
        lines += render_fashion_mnist(json.loads(f.read_text()))
    b = RESULTS / "bench_fashion_mnist.json"
    if b.exists():
        report = json.loads(b.read_text())
        plots = [
            f"docs/{p.name}" for p in sorted((HERE.parent / "docs").glob("*.png")) if p.name != "serve.png"
        ]  # serve.png: the README's screenshot
        lines += [
            "",
            f"Command: `{report.get('command', 'hashindex bench')}`; then "
            "`.venv/bin/python benchmarks/collect.py --bench REPORT_DIR [NOTE]`.",
            "",
        ]
        lines += [report["note"], ""] if report.get("note") else []
        lines.append(render_markdown(report, plots, heading="##"))
        sf = RESULTS / "seeds_fashion_mnist.json"
        if sf.exists():
            lines += [""] + render_seeds(json.loads(sf.read_text()), report)
    fp = RESULTS / "seeds_full_protocol.json"
    if fp.exists():
        from fit_grid import render as render_grid

        doc = json.loads(fp.read_text())
        lines += [
            "",
            "## CroVCA across seeds on the full protocol (this code: codebook targets, step schedule)",
            "",
            doc["note"],
            "",
        ]
        lines += render_grid(doc["rows"], doc["command"])
    cw = RESULTS / "coding_rate_weight.json"
    if cw.exists():
        from fit_grid import render as render_grid

        doc = json.loads(cw.read_text())
        lines += ["", "## Coding-rate weight (`--reg`) by code length and collection size", "", doc["note"], ""]
        lines += render_grid(doc["rows"], doc["command"])
    rd = RESULTS / "ranking_depth_2k.json"
    if rd.exists():
        from ranking_depth import render as render_depth

        lines += [
            "",
            "## Ranking depth on a small collection",
            "",
            "On 2,000 items mAP@1000 ranks half the database (a class holds about 200), so it measures how whole classes",
            "stay together more than how well each query's nearest items are ordered. A weaker coding-rate term wins at",
            "depth 1,000 and loses at depth 100, where the default, ITQ and float cosine are level. Embeddings: the",
            "first 2,000 training images (2 views) and 1,000 test images at 112 px, bilinear, as in the subsets below.",
            "",
        ]
        lines += render_depth(json.loads(rd.read_text()))
    # benchmarks/ is on sys.path as the script's folder
    from finetune_fmnist import render as render_finetune
    from quality_subsets import render as render_subsets
    from render_scale import render_scale

    sub = render_subsets()
    lines += [""] + sub if sub else []
    lines += render_scale(RESULTS)
    tuned = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("finetune_fashion_mnist*.json"))]
    if tuned:
        lines += [""] + render_finetune(tuned)
    fz = RESULTS / "frozen_10k_e10.json"
    if fz.exists():  # the 10-epoch LoRA row against a frozen probe trained as long
        from hashindex.measure.report import describe_machine

        doc = json.loads(fz.read_text())
        lines += ["", f"Equal training length: {doc['what']}; {doc['date']}, {describe_machine(doc['machine'])}:", ""]
        for run in doc["runs"]:
            ev = run["evaluate"]
            lines.append(
                f"- seed {run['seed']}: mAP@1000 {100 * ev['map']:.1f} (asymmetric {100 * ev['asymmetric_map']:.1f}); `"
                + "`; `".join(run["commands"])
                + "`"
            )
    es = RESULTS / "embed_speed.json"
    if es.exists():
        from embed_speed import render as render_embed_speed

        lines += ["", "## Speed on the CPU", ""] + render_embed_speed(json.loads(es.read_text()))
    fs = RESULTS / "fit_speed.json"
    if fs.exists():
        from fit_speed import render as render_fit_speed

        lines += [""] + render_fit_speed(json.loads(fs.read_text()))
    gs = RESULTS / "gpu_search.json"
    if gs.exists():
        from gpu_search import render as render_gpu_search

        lines += [""] + render_gpu_search(json.loads(gs.read_text()))
    sl = RESULTS / "serve_load.json"
    if sl.exists():
        from serve_load import render_markdown as render_serve

        lines += [""] + render_serve(json.loads(sl.read_text()))
    sa = RESULTS / "serve_attack.json"
    if sa.exists():
        from serve_attack import render_markdown as render_attack

        lines += [""] + render_attack(json.loads(sa.read_text()))
    from sections import render_all

    lines += render_all(RESULTS)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if argv[:1] == ["--bench"]:
        collect_bench(Path(argv[1]), argv[2] if len(argv) > 2 else None)
    elif argv[:1] == ["--seeds"]:
        collect_seeds([Path(a) for a in argv[1:]])
    elif argv:
        collect(Path(argv[0]))
    (HERE.parent / "BENCHMARKS.md").write_text(render())
    print(f"wrote {HERE.parent / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
