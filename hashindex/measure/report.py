"""Rendering of bench reports: Markdown tables from ``report.json`` (plots: :mod:`hashindex.measure.plots`)."""

from __future__ import annotations

from hashindex.core.config import METHOD_NAMES, PROTOCOL_TARGETS

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
            f"| {s['scope']} | {s['n']:,} | {kind_label(s)} | {s.get('bits', '–')} | {s['qps']:,.0f} | "
            f"{s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {_fmt(None if s.get('map') is None else 100 * s['map'])} |"
        )
    L += render_exact(report, heading)
    L += render_synthetic_ivf(report.get("synthetic_ivf"))
    L += render_pipeline(report.get("pipeline_speed"), heading)
    L += render_memory(report, heading)
    L += ["", f"{heading}# Targets", ""]
    if not any(t["target"].startswith(tuple(f"{m} mAP@" for m in PROTOCOL_TARGETS)) for t in report.get("targets", [])):
        L += [
            "The mAP targets belong to the Fashion-MNIST protocol (60,000 items, 10,000 queries): not this collection.",
            "",
        ]
    for t in report.get("targets", []):
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        L.append(f"- {t['target']}: {_fmt(t['value'], '.2f')} (needs {_bound(t)} {t['threshold']:.1f}) → **{verdict}**")
    for p in plots or []:
        L += ["", f"![{p}]({p})"]
    return "\n".join(L) + "\n"


def _exact(r: dict) -> str:
    """``yes, 20/20``: distances equal to flat's, and the NumPy reference agreeing on the checked queries."""
    if r.get("exact") is None:
        return "–"
    head = "yes" if r["exact"] else "NO"
    if "checked" in r:
        head += f", {r['checked'] - r['mismatches']}/{r['checked']}"
    return head


def _bound(t: dict) -> str:
    return "≤" if t["unit"] == "B" or t.get("at_most") else "≥"


def kind_label(s: dict) -> str:
    """A speed row's index as the tables name it: ``auto → mih``, ``mih+filter 0.1%``."""
    if s["kind"] == "auto" and s.get("chosen"):
        return f"auto → {s['chosen']}"
    if "selectivity" in s:
        return f"{s['kind']} {100 * s['selectivity']:g}%"
    return s["kind"]


def render_exact(report: dict, heading: str = "#") -> list[str]:
    """Exact search beyond the scan: multi-index hashing and the automatic choice beside flat,
    the k-th neighbour distances that decide between them, and filtered searches."""
    sp = report["speed"]
    pairs = [s for s in sp if s["kind"] in ("mih", "lookup") and "mean_ms" in s]
    autos = [s for s in sp if s["kind"] == "auto"]
    filt = [s for s in sp if "selectivity" in s]
    kth = report.get("kth_distance") or []
    if not (pairs or autos or filt or kth):
        return []
    L = [
        "",
        f"{heading}## Exact search: multi-index hashing, the automatic choice, filters",
        "",
        "Single-query latency (mean and p50 of one-query calls, ms), k as above. mih: exact multi-index hashing with "
        "its default tables; flat: the scan (faiss `IndexBinaryFlat`); auto: the kind `build` chooses on the "
        "collection (timing a sample of its own codes), compared with the faster exact kind measured here. "
        "Exact: distances equal to the flat index's on every query, and ids with ties by id equal to a NumPy "
        "popcount's on the first queries (agreeing / checked).",
        "",
        "| scope | items | bits | flat mean / p50 | mih or lookup mean / p50 | flat / mih (mean) | tables | exact "
        "| auto → kind | auto / best (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def same(a, b):
        return a["scope"] == b["scope"] and a["n"] == b["n"] and a.get("bits") == b.get("bits")

    for p in pairs:
        fl = next((s for s in sp if s["kind"] == "flat" and same(s, p)), None)
        au = next((s for s in autos if same(s, p)), None)
        fcell = "–" if fl is None or "mean_ms" not in fl else f"{fl['mean_ms']:.3f} / {fl['p50_ms']:.3f}"
        ratio = None if fl is None or "mean_ms" not in fl else fl["mean_ms"] / p["mean_ms"]
        L.append(
            f"| {p['scope']} | {p['n']:,} | {p['bits']} | {fcell} | "
            f"{p['kind']} {p['mean_ms']:.3f} / {p['p50_ms']:.3f} | "
            f"{_fmt(ratio, '.2f')} | {p.get('tables', 1)} | {_exact(p)} | "
            f"{'–' if au is None else au['chosen']} | {_fmt(None if au is None else au.get('ratio_to_best'), '.2f')} |"
        )
    for au in autos:
        why = au.get("reason") or ""
        where = f"{au['scope']} {au['n']:,} x {au['bits']} bits"
        L.append(f"\nauto at {where} → {au['chosen']} in {au['choose_seconds']:.1f} s: {why}.")
    if kth:
        L += [
            "",
            "Distance of the k-th nearest neighbour (flat results): what decides between multi-index hashing "
            "(close neighbours) and a scan.",
            "",
            "| scope | items | bits | k | min | p10 | p50 | p90 | max | p50 / bits |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in kth:
            L.append(
                f"| {r['scope']} | {r['n']:,} | {r['bits']} | {r['k']} | {r['min']} | {r['p10']:g} | {r['p50']:g} | "
                f"{r['p90']:g} | {r['max']} | {r['p50'] / r['bits']:.2f} |"
            )
    if filt:
        L += [
            "",
            "Filtered searches: a filter allowing a random 50%, 5% or 0.1% of the items (at least one; "
            "sorted rows, as a label filter resolves), each search through `CodeIndex.search(allowed=...)`; "
            "a selective filter is answered by a scan of its rows. Ratio: mean latency over the same kind "
            "unfiltered. Exact: distances equal to the flat index's under the same filter, and ids equal to a "
            "NumPy popcount's over the allowed rows on the first queries.",
            "",
            "| scope | items | bits | index | allowed | rows | answered by | mean ms | p50 ms | p99 ms | × unfiltered "
            "| k-th dist p50 | exact |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for f in filt:
            L.append(
                f"| {f['scope']} | {f['n']:,} | {f['bits']} | {f['kind'].split('+')[0]} | "
                f"{100 * f['selectivity']:g}% | "
                f"{f['allowed']:,} | {f['routed']} | {f['mean_ms']:.3f} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} | "
                f"{f['ratio_to_unfiltered']:.2f} | {f['kth_p50']:g} | {_exact(f)} |"
            )
    return L


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
