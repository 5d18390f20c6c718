"""Frozen probe vs LoRA fine-tuning (``hashindex finetune``) on a Fashion-MNIST subset, through the CLI.

Database = the first N training images, queries = the first Q test images, EfficientNet-Lite0 at
SIZE px (bilinear). Frozen: ``embed --views 2`` + ``fit-probe``; LoRA: ``finetune`` on the same
images, then ``embed --adapter`` of database and queries and ``build`` with the tuned probe. Same
seed, same queries, mAP@1000 by ``evaluate``. Re-running skips finished steps (each is resumable).

    .venv/bin/python benchmarks/finetune_fmnist.py --work /work/runs/i14 --n 5000 --q 1000 --size 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H = str(REPO / ".venv/bin/hashindex")


def sh(*args) -> str:
    print("+", " ".join(map(str, args)), flush=True)
    return subprocess.run([H, "-q", *map(str, args)], check=True, capture_output=True, text=True).stdout


def timed(path: Path, *args) -> float:
    """Run a command unless its output exists; returns its seconds (recorded beside the output)."""
    stamp = Path(str(path) + ".seconds")
    if not path.exists():
        t0 = time.perf_counter()
        sh(*args)
        stamp.write_text(f"{time.perf_counter() - t0:.1f}\n")
    return float(stamp.read_text()) if stamp.exists() else None  # made by an earlier, untimed run


def evaluate(index: Path, q: Path) -> dict:
    r = json.loads(sh("evaluate", index, q, "--json", "--no-float"))
    return {"map": round(100 * r["map"], 2), "precision": round(100 * r["precision"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--q", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bits", default="64")
    ap.add_argument("--modes", default="unsupervised,supervised")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="for fit-probe and finetune alike [default: each one's]"
    )
    ap.add_argument("--adapter-lr", type=float, default=None, help="finetune --adapter-lr [default: finetune's]")
    ap.add_argument(
        "--lora-layers", default=None, help="finetune --lora-layers [default: finetune's, every eligible layer]"
    )
    ap.add_argument(
        "--stopped",
        type=Path,
        default=None,
        help="record the state of a stopped finetune run (its checkpoint) beside the results",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/finetune_fashion_mnist.json")
    a = ap.parse_args()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    common = ["--image-size", a.size, "--interpolation", "bilinear", "--device", "cpu"]
    seed = ["--seed", a.seed]
    layers = ["--lora-layers", a.lora_layers] if a.lora_layers else []
    layers += ["--adapter-lr", a.adapter_lr] if a.adapter_lr else []
    batch = ["--batch-size", a.batch_size] if a.batch_size else []
    if a.stopped:  # only record it, beside the existing results
        doc = json.loads(a.out.read_text())
        doc["stopped_run"] = stopped_run(a.stopped)
        a.out.write_text(json.dumps(doc, indent=1) + "\n")
        return
    t = {
        "embed_db_frozen": timed(
            w / "db.h5", "embed", "fashion-mnist", w / "db.h5", "--limit", a.n, "--views", 2, *common, *seed
        )
    }
    t["embed_q_frozen"] = timed(
        w / "q.h5", "embed", "fashion-mnist", w / "q.h5", "--split", "test", "--limit", a.q, *common
    )
    rows = []
    for bits in [int(b) for b in a.bits.split(",")]:
        for mode in a.modes.split(","):
            sup = ["--supervised"] if mode == "supervised" else []
            name = f"{mode}-{bits}"
            p, i = w / f"probe-{name}", w / f"index-{name}"
            fit_s = timed(p, "fit-probe", w / "db.h5", p, "--bits", bits, *sup, *batch, *seed)
            timed(i, "build", w / "db.h5", p, i)
            frozen = evaluate(i, w / "q.h5")
            ft = w / f"lora-{name}"
            ft_s = timed(
                ft / "adapter.json",
                "finetune",
                "fashion-mnist",
                ft,
                "--limit",
                a.n,
                "--bits",
                bits,
                *sup,
                "--epochs",
                a.epochs,
                *layers,
                *batch,
                *common,
                *seed,
            )
            doc = json.loads((ft / "adapter.json").read_text())
            db, q, fi = w / f"db-{name}.h5", w / f"q-{name}.h5", w / f"index-lora-{name}"
            emb_db = timed(db, "embed", "fashion-mnist", db, "--limit", a.n, "--adapter", ft, "--device", "cpu")
            emb_q = timed(
                q, "embed", "fashion-mnist", q, "--split", "test", "--limit", a.q, "--adapter", ft, "--device", "cpu"
            )
            timed(fi, "build", db, ft / "probe", fi)
            lora = evaluate(fi, q)
            rows.append(
                {
                    "mode": mode,
                    "bits": bits,
                    "frozen_map": frozen["map"],
                    "lora_map": lora["map"],
                    "gain": round(lora["map"] - frozen["map"], 2),
                    "frozen_fit_seconds": fit_s,
                    "finetune_seconds": doc["seconds"],
                    "finetune_command_seconds": ft_s,
                    "epoch_seconds": [h["seconds"] for h in doc["history"]],
                    "history": doc["history"],
                    "trainable_params": doc["trainable_params"],
                    "backbone_params": doc["backbone_params"],
                    "embed_db_lora_seconds": emb_db,
                    "embed_q_lora_seconds": emb_q,
                    "eval_view": doc["config"].get("eval_view", False),
                    "targets": doc["config"].get("targets") if sup else None,  # None before the option: see _mode
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            _write(a, rows, t)
    if rows:
        t["cold_start"] = cold_start(w, f"{rows[0]['mode']}-{rows[0]['bits']}")
        _write(a, rows, t)


def stopped_run(ckpt: Path) -> dict:
    """What a finetune run stopped after some epochs had done: its settings and per-epoch history."""
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as fh:
        state = json.loads(fh.metadata()["state"])
    cfg, src = state["settings"]["config"], state["settings"]["source"]
    return {
        "folder": str(ckpt.parent),
        "train_images": src.get("limit") or src.get("n"),
        "epochs_planned": cfg["epochs"],
        "epochs_done": state["epoch"],
        "history": state["history"],
        "image_size": cfg["image_size"],
        "lora_layers": cfg["lora"]["layers"],
    }


def cold_start(w: Path, name: str, reps: int = 3) -> dict:
    """Wall time of one `query` with an image (a fresh process: imports, backbone, index) on the
    frozen index and on the LoRA one (which also loads and attaches the adapter), alternated."""
    from PIL import Image

    from hashindex.embedding.sources import open_source

    img = w / "query.png"
    Image.fromarray(open_source("fashion-mnist", split="test", limit=1).load(0)).save(img)
    times: dict[str, list[float]] = {"frozen": [], "lora": []}
    for _ in range(reps):
        for kind, index in (("frozen", w / f"index-{name}"), ("lora", w / f"index-lora-{name}")):
            t0 = time.perf_counter()
            sh("query", index, img, "-k", 10, "--device", "cpu")
            times[kind].append(round(time.perf_counter() - t0, 2))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"index": name, "seconds": times, "median_frozen": med["frozen"], "median_lora": med["lora"]}


def _write(a, rows, t) -> None:
    doc = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "python": platform.python_version(),
        "command": f".venv/bin/python benchmarks/finetune_fmnist.py --work {a.work} --n {a.n} --q {a.q} --size {a.size} "
        f"--bits {a.bits} --modes {a.modes} --epochs {a.epochs} --seed {a.seed}"
        + (f" --lora-layers '{a.lora_layers}'" if a.lora_layers else "")
        + (f" --batch-size {a.batch_size}" if a.batch_size else "")
        + (f" --adapter-lr {a.adapter_lr:g}" if a.adapter_lr else ""),
        "protocol": {
            "train_images": a.n,
            "queries": a.q,
            "image_size": a.size,
            "interpolation": "bilinear",
            "views": 2,
            "epochs": a.epochs,
            "seed": a.seed,
            "lora_layers": a.lora_layers or "all eligible",
            "adapter_lr": a.adapter_lr,
            "batch_size": a.batch_size,
            "metric": "mAP@1000, Hamming ranking, ties by id",
        },
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "embed_seconds": t,
        "rows": rows,
    }
    a.out.write_text(json.dumps(doc, indent=1) + "\n")


def render(docs: list[dict]) -> list[str]:
    """The BENCHMARKS.md section of one or more result files (called by collect.py)."""
    lines = [
        "## LoRA fine-tuning (`hashindex finetune`) vs the frozen probe",
        "",
        "Fashion-MNIST subsets on the 2-core CPU: database = the first N training images, queries = the",
        "first Q test images, EfficientNet-Lite0 (packaged ImageNet weights) at 64 px, bilinear. Frozen: `embed",
        "--views 2` + `fit-probe` (eval view on; 5 epochs on 2026-11-28, the automatic schedule of at least 1,000",
        "steps on 2026-11-30). LoRA: `finetune` on the same N images (views made on the fly, rank 16, alpha 16,",
        "dropout 0.1, HashCoder lr 1e-3, adapter lr as in the table, first epoch HashCoder only), then `embed",
        "--adapter` of database and queries and `build` with the tuned probe. The batch size in the table is both",
        "sides'. Both sides use the seed in the table, the same queries, mAP@1000 by `evaluate` (Hamming ranking, ties by id).",
        "",
        "| date | seed | mode | bits | N train | Q | batch | epochs | eval view | adapter lr | adapted layers | trainable / backbone weights | frozen mAP | LoRA mAP | gain | fine-tuning s (per epoch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for doc in docs:
        p = doc["protocol"]
        for r in doc["rows"]:
            per = " / ".join(f"{s:.0f}" for s in r["epoch_seconds"])
            lines.append(
                f"| {doc['date']} | {p['seed']} | {_mode(r)} | {r['bits']} | {p['train_images']:,} | {p['queries']:,} | {p.get('batch_size') or 'defaults'} | {p['epochs']} | "
                f"{'yes' if r.get('eval_view') else 'no'} | {p.get('adapter_lr') or 5e-4:g} | `{p['lora_layers']}` | "
                f"{r['trainable_params']:,} / {r['backbone_params']:,} | {r['frozen_map']:.1f} | {r['lora_map']:.1f} | "
                f"{r['gain']:+.1f} | {r['finetune_seconds']:.0f} ({per}) |"
            )
    for doc in docs:
        cs = doc.get("embed_seconds", {}).get("cold_start")
        if cs:
            lines += [
                "",
                f"Cold start of `query` with one image, a fresh process each time (median of {len(cs['seconds']['lora'])}, "
                f"alternated): frozen index {cs['median_frozen']:.1f} s, LoRA index {cs['median_lora']:.1f} s "
                f"(the latter also reads the adapter and wraps its layers); {doc['date']}, {doc['protocol']['train_images']:,}-image run; "
                "every run in the JSON.",
            ]
    lines += ["", "Commands (machine, date):", ""]
    lines += [f"    {d['command']}    # {d['machine']}, {d['date']}" for d in docs]
    for doc in docs:
        st = doc.get("stopped_run")
        if st:
            h = st["history"]
            times = ", ".join(f"{e['seconds']:.0f} s ({e['trained']})" for e in h)
            lines += [
                "",
                f"A run on {st['train_images']} training images was stopped after {st['epochs_done']} of its "
                f"{st['epochs_planned']} epochs (same settings as the 1k rows, batch 64): epoch times {times}, too slow to finish on the shared CPU in the time there was; "
                f"its checkpoint resumes with the same command.",
            ]
    lines += ["", *NOTES]
    return lines


def _mode(row: dict) -> str:
    """The mode, with the supervised targets (finetune used the paper's prototypes before --targets)."""
    return f"supervised ({row.get('targets') or 'prototype'})" if row["mode"] == "supervised" else row["mode"]


NOTES = [
    "What these figures are, and what is missing:",
    "",
    "- The 2026-11-30 rows are the issue's subset: 10,000 training images (the database) with 2 views at 64 px,",
    "  2,000 queries, seed 0, batch 64 on both sides (fit-probe then runs its automatic schedule, 1,000+ steps;",
    "  finetune 5 epochs = 785 steps, 628 of them with the adapters), adapters on the last three stages and",
    "  conv_head (`--lora-layers`, so that the backward pass runs only through the late, low-resolution",
    "  layers). The later rows reuse the first row's frozen side (the same embeddings, probe and index).",
    "- The 2026-12-01 rows: the same with 10 epochs (1,570 steps, 1,413 with the adapters); each seed embeds its",
    "  own views (`embed --seed`) and fits its own frozen probe, and rows of one seed share that frozen side.",
    "- `eval view`: finetune draws each image's two views among its eval view and two augmented views, as",
    "  fit-probe draws among the cached ones (`--eval-view`, now the default); without it, two augmented",
    "  views. It doubled the gain at the same settings.",
    "- Target (LoRA >= frozen + 2 mAP@1000 points at 64 bits, unsupervised, same seed): met at seed 0, **missed**",
    "  at seed 1. With 10 epochs (2026-12-01 rows) the gain over the frozen probe (its automatic schedule) is",
    "  +2.5 at seed 0 and +1.7 at seed 1 (mean +2.1); against frozen probes refitted with the same 10 epochs",
    "  (69.2 at both seeds, below) it is +1.7 and +1.6. With 5 epochs the best was +1.5 (adapter lr 1e-3);",
    "  2e-3 lowered the loss further without a better mAP; adapting every pointwise convolution (`all",
    "  eligible`, 364,544 weights) at 1e-3 gained less (+0.8) than the late layers alone. Each 10k run takes",
    "  13-29 minutes of this CPU; untried: more images, other ranks.",
    "- Supervised 64 bits, seed 0, 10 epochs: with fit-probe's class codebook as targets (`supervised (codebook)`,",
    "  the default since 2026-12-01) LoRA gives 90.9 against the frozen probe's 86.7 (+4.2); with the paper's",
    "  class prototypes, which finetune used before, 85.0 (-1.7). One seed.",
    "- The 2026-11-28 rows (1,000 images, 3 epochs, no eval view) were run on a machine shared by several other",
    "  jobs; their supervised row is below the frozen probe (not re-measured with the eval view).",
    "- 16 bits, same settings, seed 0: LoRA 67.6 against the frozen probe's 68.7 (-1.1): at this length the",
    "  tuned backbone did not help (one seed; the loss was still falling; its epochs 5-7 shared the CPU with a",
    "  test run, hence their times).",
    "- The full protocol on a GPU (60k images, 5 epochs, time per epoch): not measured, no GPU in this session.",
]


if __name__ == "__main__":
    main()
