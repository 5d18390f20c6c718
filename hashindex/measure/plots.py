"""The bench report's plots (matplotlib, PNG): quality against code length, and quality against
speed, from ``report.json``."""

from __future__ import annotations

from pathlib import Path

from hashindex.measure.report import NAMES, kind_label


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
    for s in (s for s in report["speed"] if s["scope"] == "collection" and "selectivity" not in s):
        mq = s.get("map")
        if mq is None and s["kind"] == "float-IndexFlatIP":
            mq = fl["map"] if fl else None
        elif mq is None and not s["kind"].startswith("ivf"):  # IVF without full lists: no mAP
            mode = "rerank-float-" + str(cfg["rerank"]) if "rerank" in s["kind"] else "hamming"
            row = next((x for x in q if x["method"] == "crovca" and x["bits"] == s["bits"] and x["mode"] == mode), None)
            mq = row["map"] if row else None
        if mq is not None:
            ax.scatter(s["qps"], 100 * mq, s=18)
            ax.annotate(f"{kind_label(s)} {s.get('bits', '')}", (s["qps"], 100 * mq), fontsize=6)
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
