"""Rendering of bench reports: Markdown tables and matplotlib plots from ``report.json``."""

from __future__ import annotations

from pathlib import Path

from hashindex.core.config import METHOD_NAMES

NAMES = {"float": "float cosine", **METHOD_NAMES}


def describe_machine(m: dict) -> str:
    gpu = f"{m['gpu']}, " if m.get("gpu") else ""
    return f"{gpu}{m['cpu']}, {m['cores']} cores; torch {m['torch']}, faiss {m['faiss']}, Python {m['python']}"


def _fmt(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def render_markdown(report: dict, plots: list[str] | None = None, heading: str = "#") -> str:
    """The report as Markdown (tables of quality, speed, memory, targets)."""
    cfg, q = report["config"], report["quality"]
    bits = sorted({r["bits"] for r in q if r["method"] != "float"})
    k, r = cfg["topk"], cfg["rerank"]
    db, qu = report["database"], report["queries"]
    L = [
        f"{heading} hashindex bench report",
        "",
        f"Date {report['date']}; machine: {describe_machine(report['machine'])}.",
        f"Database {db['path']} ({db['n']:,} items, {db['dim']}-d, {db['backbone']['model']} at "
        f"{db['backbone']['image_size']} px); queries {qu['path']} ({qu['n']:,}). mAP@{k}, "
        "symmetric Hamming ranking with equal distances ordered by id.",
        "",
        f"{heading}# Quality: mAP@{k} (%)",
        "",
        f"Hamming ranking / Hamming top-{r}k re-ranked by float cosine / top-{r}k re-ranked by the "
        "asymmetric distance (query sigmoid(logits) vs database bits).",
        "",
        "| method | " + " | ".join(f"{b} bits" for b in bits) + " |",
        "|---|" + "---|" * len(bits),
    ]
    fl = next((x for x in q if x["method"] == "float"), None)
    sub = min((x for x in q if x["method"] == "float"), key=lambda x: x.get("nq", 0), default=None)
    if fl:
        L.append(f"| float cosine ({fl['bits'] // 32}-d) | " + " | ".join(_fmt(100 * fl["map"]) for _ in bits) + " |")
    if sub is not None and sub is not fl:
        L.append(
            f"| float cosine, first {sub['nq']:,} queries (the re-ranked figures use these) | "
            + " | ".join(_fmt(100 * sub["map"]) for _ in bits)
            + " |"
        )
    methods = [m for m in NAMES if m != "float" and any(x["method"] == m for x in q)]
    for m in methods:
        cells = []
        for b in bits:
            vals = [
                next((x for x in q if x["method"] == m and x["bits"] == b and x["mode"] == mode), None)
                for mode in ("hamming", f"rerank-float-{r}", f"asymmetric-{r}")
            ]
            cells.append(" / ".join(_fmt(None if v is None else 100 * v["map"]) for v in vals))
        L.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    L += ["", f"Precision@{k} and precision within Hamming radius 2 (%), Hamming ranking:", ""]
    L += ["| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---|" * len(bits)]
    for m in methods:
        cells = []
        for b in bits:
            v = next((x for x in q if x["method"] == m and x["bits"] == b and x["mode"] == "hamming"), None)
            cells.append("–" if v is None else f"{100 * v['precision']:.1f} / {100 * v['precision_r2']:.1f}")
        L.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    L += render_tables(report, heading)
    L += [
        "",
        f"{heading}# Fit and build time (s)",
        "",
        "| method | " + " | ".join(f"{b} bits" for b in bits) + " |",
        "|---|" + "---|" * len(bits),
    ]
    for m in methods:
        cells = []
        for b in bits:
            v = next((x for x in report["fit"] if x["method"] == m and x["bits"] == b), None)
            cells.append("–" if v is None else f"{v['fit_seconds']:.1f} / {v['build_seconds']:.2f}")
        L.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    L += [
        "",
        f"{heading}# Speed",
        "",
        f"k = {cfg['speed_k']}; queries/s from one batched call, latency from single-query calls.",
        "",
    ]
    L += ["| scope | items | index | bits | queries/s | p50 ms | p99 ms | mAP |", "|---|---|---|---|---|---|---|---|"]
    for s in report["speed"]:
        L.append(
            f"| {s['scope']} | {s['n']:,} | {s['kind']} | {s.get('bits', '–')} | {s['qps']:,.0f} | {s['p50_ms']:.3f} | "
            f"{s['p99_ms']:.3f} | {_fmt(None if s.get('map') is None else 100 * s['map'])} |"
        )
    L += render_synthetic_ivf(report.get("synthetic_ivf"))
    L += render_pipeline(report.get("pipeline_speed"), heading)
    L += render_memory(report, heading)
    L += ["", f"{heading}# Targets", ""]
    for t in report.get("targets", []):
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        L.append(
            f"- {t['target']}: {_fmt(t['value'], '.2f')} (needs {'≤' if t['unit'] == 'B' else '≥'} {t['threshold']:.1f}) → **{verdict}**"
        )
    for p in plots or []:
        L += ["", f"![{p}]({p})"]
    return "\n".join(L) + "\n"


def render_synthetic_ivf(rows: list[dict] | None) -> list[str]:
    """IVF on the synthetic collections (``--synthetic-ivf``): the nprobe that reaches recall@k
    0.95 against flat, its speed-up, and the sweep."""
    if not rows:
        return []
    L = [
        "",
        "Synthetic collections: codes drawn around 4,096 random centres, each bit flipped with probability 1/8 "
        "(queries drawn the same way). IVF against the flat index of the same codes; recall@k counts a place "
        "filled by an item at most as far as the flat k-th distance.",
        "",
        "| items | bits | nlist | build s | nprobe at recall ≥ 0.95 | recall | IVF q/s | flat q/s | IVF / flat |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = r["at_target"] or {}
        L.append(
            f"| {r['n']:,} | {r['bits']} | {r['nlist']} | {r['build_seconds']:.1f} | {at.get('nprobe', 'not reached')} | "
            f"{_fmt(at.get('recall'), '.3f')} | {_fmt(at.get('qps'), ',.0f')} | {r['flat_qps']:,.1f} | {_fmt(r['speedup'], '.1f')} |"
        )
    for r in rows:
        sweep = ", ".join(f"{x['nprobe']}: {x['recall']:.3f} at {x['qps']:,.0f} q/s" for x in r["sweep"])
        L.append(f"\nSweep at {r['n']:,} items, {r['bits']} bits (nprobe: recall, q/s): {sweep}.")
    return L


def _ram_cell(s: dict) -> str:
    if s.get("ram_bytes_per_item") is not None and "ram_note" in s:
        return f"{s['ram_bytes_per_item']:.2f}"
    return s.get("ram_note", "not shown (an older report's in-process reading)")


def render_memory(report: dict, heading: str = "#") -> list[str]:
    """The memory table: faiss's own sizes of the synthetic flat indexes, their RSS growth where
    measured, and the float vectors."""
    fsz = next((s["float_bytes_per_item"] for s in report["speed"] if "float_bytes_per_item" in s), None)
    rss_from = report["config"].get("rss_min_items")
    L = [
        "",
        f"{heading}# Memory (bytes per item)",
        "",
        "Serialised index and codes: faiss's own sizes (`serialize_index_binary`, `code_size × ntotal`), exact. "
        "RSS growth: measured in a fresh process around `add` of the codes"
        + (f", only at {rss_from:,} items or more" if rss_from else "")
        + "; an index too small for the reading to resolve it says so instead of a number.",
        "",
        "| items | bits | serialised flat index | codes in faiss | RSS growth of the flat index | float32 vectors |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["speed"]:
        if s["kind"] == "flat" and s["scope"] == "synthetic":
            code = s.get("code_bytes_per_item", s["bits"] / 8)
            L.append(
                f"| {s['n']:,} | {s['bits']} | {s['index_bytes_per_item']:.2f} | {code:.2f} | {_ram_cell(s)} | {_fmt(fsz, ',')} |"
            )
    return L


def render_pipeline(ps: dict | None, heading: str = "#") -> list[str]:
    """The pipeline-speed table (:mod:`hashindex.measure.speed`): hashindex beside the bare reference."""
    L = ["", f"{heading}# Pipeline speed: hashindex beside a bare reference loop", ""]
    if ps is None:
        return L + ["Not measured in this report (made before the section existed)."]
    L += [
        f"Device: {ps['device_name']}. Each reference ran in the same run on the same work; ratio = the reference's "
        "time / hashindex's time (1.00x: hashindex at the bare loop's pace).",
        "",
        "| stage | work | hashindex | reference | ratio |",
        "|---|---|---|---|---|",
    ]
    e = ps.get("embed")
    if e is None:
        L.append("| embed | – | not measured (no `--images`) | – | – |")
    else:
        h, r = e["hashindex"], e["reference"]
        L.append(
            f"| embed | {e['images']:,} images of {e['source']} × (1 + {e['views']} views) = {h['passes']:,} passes, "
            f"{e['model']} at {e['image_size']} px, batch {e['batch_size']} | {h['passes_per_s']:,.0f} passes/s "
            f"({h['seconds']:.2f} s embedding; {h['wall_seconds']:.2f} s wall with model load and file) | "
            f"{r['passes_per_s']:,.0f} passes/s (bare batched forward over random tensors, channels-last) | {e['ratio']:.2f}x |"
        )
    f = ps["fit"]
    L.append(
        f"| fit | CroVCA {f['bits']} bits, {f['rows']:,} rows × {f['views']} views, {f['epochs']} epochs = {f['steps']:,} steps of {f['batch_size']} | "
        f"{f['hashindex']['seconds']:.2f} s (`fit_probe`, reading the file included) | {f['reference']['seconds']:.2f} s "
        f"(plain loop over the arrays: same HashCoder, AdamW, loss, data on the device) | {f['ratio']:.2f}x |"
    )
    qy = ps["query"]
    for kind, work in (("embeddings", "`--embeddings` with `--limit 1`"), ("image", "one PNG image")):
        row = qy.get(kind)
        head = f"| query, {kind} | one cold `hashindex query` process, {work}, flat index of {qy['index_items']:,} items, {qy['bits']} bits | "
        if row is None:
            L.append(head + "not measured (no `--images`: no image to query) | – | – |")
        else:
            L.append(
                head
                + f"{row['seconds']:.2f} s wall | {row['reference_seconds']:.2f} s (`{row['reference']}`) | {row['ratio']:.2f}x |"
            )
    return L


def write_plots(report: dict, out_dir: str | Path) -> list[str]:
    """mAP vs bits, QPS vs mAP (Pareto) and PR curves as PNG files; returns their names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out, q, cfg = Path(out_dir), report["quality"], report["config"]
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in [m for m in NAMES if m != "float"]:
        pts = sorted((x["bits"], 100 * x["map"]) for x in q if x["method"] == m and x["mode"] == "hamming")
        if pts:
            ax.plot(*zip(*pts), marker="o", label=NAMES[m])
    fl = next((x for x in q if x["method"] == "float"), None)
    if fl:
        ax.axhline(100 * fl["map"], color="k", ls="--", label="float cosine")
    ax.set(xscale="log", xlabel="bits", ylabel=f"mAP@{cfg['topk']} (%)", title="Quality per bit")
    ticks = sorted({x["bits"] for x in q if x["method"] != "float"})
    ax.set_xticks(ticks, labels=[str(b) for b in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "map_vs_bits.png", dpi=110)
    plt.close(fig)
    names.append("map_vs_bits.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in (s for s in report["speed"] if s["scope"] == "collection"):
        mq = s.get("map")
        if mq is None and s["kind"] == "float-IndexFlatIP":
            mq = fl["map"] if fl else None
        elif mq is None and not s["kind"].startswith("ivf"):  # IVF without full lists: no mAP
            mode = "rerank-float-" + str(cfg["rerank"]) if "rerank" in s["kind"] else "hamming"
            row = next((x for x in q if x["method"] == "crovca" and x["bits"] == s["bits"] and x["mode"] == mode), None)
            mq = row["map"] if row else None
        if mq is not None:
            ax.scatter(s["qps"], 100 * mq, s=18)
            ax.annotate(f"{s['kind']} {s.get('bits', '')}", (s["qps"], 100 * mq), fontsize=6)
    ax.set(xscale="log", xlabel="queries/s (log)", ylabel="mAP (%)", title="Speed vs quality (collection)")
    fig.tight_layout()
    fig.savefig(out / "qps_vs_map.png", dpi=110)
    plt.close(fig)
    names.append("qps_vs_map.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, c in report["pr_curves"].items():
        if (
            key.startswith("crovca-")
            and not key.startswith("crovca-sup")
            or key.startswith("itq")
            or key.startswith("lsh")
        ):
            ax.plot(c["recall"], c["precision"], label=key, lw=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall over Hamming radius")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=110)
    plt.close(fig)
    names.append("pr_curves.png")
    return names


def render_tables(report: dict, heading: str = "#") -> list[str]:
    """Markdown lines: the asymmetric ranking of the whole database, seed spread, IVF recall."""
    q, k = report["quality"], report["config"]["topk"]
    bits = sorted({r["bits"] for r in q if r["mode"] == "asymmetric"})
    L: list[str] = []
    if bits:
        L += [
            "",
            f"Asymmetric ranking of the whole database (the CroVCA paper's mAP@{k}: query sigmoid(logits) vs database bits, L1), beside symmetric Hamming (%):",
            "",
        ]
        L += ["| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---|" * len(bits)]
        for m in [m for m in NAMES if any(r["method"] == m and r["mode"] == "asymmetric" for r in q)]:
            cells = []
            for b in bits:
                h = next((r for r in q if r["method"] == m and r["bits"] == b and r["mode"] == "hamming"), None)
                a = next((r for r in q if r["method"] == m and r["bits"] == b and r["mode"] == "asymmetric"), None)
                cells.append(
                    f"{_fmt(None if h is None else 100 * h['map'])} / {_fmt(None if a is None else 100 * a['map'])}"
                )
            L.append(f"| {NAMES[m]} (Hamming / asymmetric) | " + " | ".join(cells) + " |")
    seeds = report.get("seeds") or []
    if seeds:
        L += [
            "",
            f"{heading}# Quality across seeds: mAP@{k} (%)",
            "",
            "| method | bits | ranking | seeds | default seed | mean | min | std | per seed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in seeds:
            per = ", ".join(f"{100 * x:.1f}" for x in r["maps"])
            L.append(
                f"| {NAMES.get(r['method'], r['method'])} | {r['bits']} | {r['mode']} | {','.join(map(str, r['seeds']))} | "
                f"{_fmt(None if r['default'] is None else 100 * r['default'])} | {100 * r['mean']:.2f} | {100 * r['min']:.2f} | {100 * r['std']:.2f} | {per} |"
            )
    ivf = [s for s in report["speed"] if s.get("recall") is not None and s.get("scope") == "collection"]
    if ivf:
        L += [
            "",
            f"IVF against the flat index of the same codes: recall of the flat top-{ivf[0]['k']} (ids / counting equal distances), "
            "queries that got all k back, and mAP only where every query did:",
            "",
        ]
        L += ["| bits | index | recall | recall (ties) | complete | mAP |", "|---|---|---|---|---|---|"]
        for s in ivf:
            L.append(
                f"| {s['bits']} | {s['kind']} | {100 * s['recall']:.1f} | {100 * s['recall_ties']:.1f} | {100 * s['complete']:.1f} | {_fmt(None if s['map'] is None else 100 * s['map'])} |"
            )
    return L
