"""Tables of the near-duplicate benchmark's results and the defaults derived from its quality runs
(see ``dedup.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from dedup_collection import EDITS


def fmt_best(b) -> str:
    if b is None:
        return "–"
    per = b.get("recall_by_edit", {})
    return " | ".join(
        [
            str(b["setting"]),
            f"{b['precision']:.4f}",
            f"{b['recall']:.4f}",
            *(f"{per.get(e, float('nan')):.3f}" for e in EDITS),
        ]
    )


def table(res: dict, args) -> str:
    lines = []
    if "quality" in res:
        q = res["quality"]
        head = "| method | level | setting | precision | recall | " + " | ".join(EDITS) + " |"
        lines += [
            f"Best recall at precision >= {args.min_precision} ({q['items']} items, {q['true_pairs']} true pairs):",
            "",
            head,
            "|" + "---|" * (5 + len(EDITS)),
        ]
        for bits, h in q["hashindex"].items():
            for lvl in ("pairs", "groups"):
                lines.append(
                    f"| hashindex {bits} bits (radius_bits, min_cosine, min_pixels) | {lvl} | {fmt_best(h['best_' + lvl])} |"
                )
        for name, label in (
            ("phash", "pHash 64 (Hamming <=)"),
            ("float", "float cosine (>=)"),
            ("float_pixels", "float cosine or pixels, all pairs (cosine, pixels)"),
        ):
            if name in q["methods"]:
                for lvl in ("pairs", "groups"):
                    lines.append(f"| {label} | {lvl} | {fmt_best(q['methods'][name]['best_' + lvl])} |")
        for bits, h in q["hashindex"].items():
            a = h["api_check"]
            lines += [
                "",
                f"{bits} bits, checked setting radius_bits {a['radius_bits']} min_cosine {a['min_cosine']} "
                f"min_pixels {a.get('min_pixels')} through Index.duplicates: "
                f"same groups {a['same_groups']}, pairs P {a['pair']['precision']:.4f} R {a['pair']['recall']:.4f}, "
                f"groups P {a['group']['precision']:.4f} R {a['group']['recall']:.4f}, {a['seconds']} s",
                "",
                "| radius_bits | fraction | candidates | candidate recall | join s |",
                "|---|---|---|---|---|",
            ]
            for r in h["radii"]:
                lines.append(
                    f"| {r['radius_bits']} | {r['radius']} | {r['candidates']:,} | {r['candidate_recall']:.4f} | {r['join_seconds']} |"
                )
    if "speed" in res:
        lines += [
            "",
            "| codes | centres | radius | tables | pairs | planted found | sample exact | tables s | join s | group s | dedup s | peak RSS GB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["speed"]:
            stop = "" if r["complete"] else f" (join stopped at {r['rows_joined']:,} rows)"
            pairs = f"{r['pairs']:,}" if r["complete"] else f"{r['pairs']:,} (whole: ~{r['extrapolated_pairs']:,})"
            join = (
                f"{r['join_seconds']}"
                if r["complete"]
                else f"{r['join_seconds']} (whole: ~{r.get('extrapolated_join_seconds_low') or r['extrapolated_join_seconds']:.0f}"
                + (f"-{r['extrapolated_join_seconds']:.0f})" if r.get("extrapolated_join_seconds_low") else ")")
            )
            lines.append(
                f"| {r['n']:,}{stop} | {r.get('centres', 4096):,} | {r['radius_bits']} | {r['tables']} | {pairs} | {r['planted_found']} | "
                f"{r['sample_exact']} | {r['tables_seconds']} | {join} | {r['group_seconds']} | {r['dedup_seconds']} | "
                f"{r['peak_rss_gb']} |"
            )
    return "\n".join(lines)


def summarize(files: list[str], min_precision: float, min_ratio: float) -> dict:
    """The defaults that hold across the quality runs in ``files``: ``min_cosine``, the smallest
    float threshold at which exact float cosine reaches ``min_precision`` on pairs and on groups
    in every run; ``min_pixels``, the smallest pixel threshold at which cosine >= min_cosine or
    pixels >= min_pixels (over the float pairs, no codes) still reaches it in every run;
    ``radius``, the smallest radius fraction at which hashindex keeps at least ``min_ratio`` of
    that rule's recall (pairs and groups) in every run and code length."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    runs = [(f, d["quality"]) for f, d in zip(files, docs)]

    def precise(r):
        return all(r[lvl] is not None and r[lvl]["precision"] >= min_precision for lvl in ("pair", "group"))

    per_run = []
    for (f, q), doc in zip(runs, docs):
        a = doc["args"]
        ok = [r["threshold"] for r in q["methods"]["float"]["sweep"] if precise(r)]
        per_run.append(
            {
                "file": f,
                "items": q["items"],
                "seed": a["seed"],
                "originals": a["originals"],
                "distractors": a["distractors"],
                "bits": a["bits"],
                "cosine_at_precision": min(ok) if ok else None,
            }
        )
    cands = [r["cosine_at_precision"] for r in per_run]
    if any(c is None for c in cands):
        return {"runs": per_run, "min_cosine": None}
    c = max(cands)
    pixel_ok = None
    for (_f, q), pr in zip(runs, per_run):
        rows = [r for r in q["methods"]["float_pixels"]["sweep"] if r["threshold"][0] == c]
        good = {r["threshold"][1] for r in rows if r["threshold"][1] is not None and precise(r)}
        pr["pixels_at_precision"] = min(good) if good else None
        pixel_ok = good if pixel_ok is None else pixel_ok & good
    p = min(pixel_ok) if pixel_ok else None
    fracs = {}
    for (f, q), pr in zip(runs, per_run):
        ref = next(r for r in q["methods"]["float_pixels"]["sweep"] if r["threshold"] == [c, p])
        pr["reference_at_defaults"] = {
            lvl: {k: ref[lvl][k] for k in ("precision", "recall")} for lvl in ("pair", "group")
        }
        for bits, h in q["hashindex"].items():
            for g in h["grid"]:
                r, cc, pp = g["threshold"]
                if cc != c or pp != p or g["group"] is None:
                    continue
                ratio = min(g[lvl]["recall"] / max(ref[lvl]["recall"], 1e-12) for lvl in ("pair", "group"))
                key = round(r / int(bits), 5)
                fracs.setdefault(key, []).append(
                    {
                        "file": f,
                        "bits": int(bits),
                        "radius_bits": r,
                        "ratio": round(ratio, 4),
                        "precision": g["pair"]["precision"],
                        "group_precision": g["group"]["precision"],
                    }
                )
    table = {k: {"min_ratio": min(v["ratio"] for v in vs), "runs": vs} for k, vs in sorted(fracs.items())}
    good = [k for k, v in table.items() if v["min_ratio"] >= min_ratio]
    by_bits = {}  # the same rule for each code length alone
    for bits in sorted({v["bits"] for vs in fracs.values() for v in vs}):
        ok = [k for k, vs in sorted(fracs.items()) if all(v["ratio"] >= min_ratio for v in vs if v["bits"] == bits)]
        ok = [k for k in ok if any(v["bits"] == bits for v in fracs[k])]
        by_bits[bits] = min(ok) if ok else None
    return {
        "radius_by_bits": by_bits,
        "min_precision": min_precision,
        "min_ratio": min_ratio,
        "runs": per_run,
        "min_cosine": c,
        "min_pixels": p,
        "radius": min(good) if good else None,
        "by_radius": table,
    }
