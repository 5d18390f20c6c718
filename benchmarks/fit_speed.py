"""Fit speed: CroVCA ``fit_probe`` of this tree against an older tree, side by side.

The older tree is another commit checked out in a temporary worktree (``git worktree add
/tmp/old BASE``); each fit runs in its own process with ``PYTHONPATH`` at one tree, old and new
alternating (the order flips every round), same machine, same hour, same ``nice``. Data: a
synthetic embeddings file of realistic shape (``--n`` x ``--dim``, ``--views`` cached views,
rows around class centres in a low-dimensional subspace, so the probe has structure to learn)
and held-out queries drawn the same way.

Thread settings are part of what changed (``hashindex`` makes OpenMP threads sleep instead of
spin), so the timings run under the three environments of :data:`side_by_side.ENVS`: ``as
shipped`` (what a user gets), ``both passive`` and ``both 1 thread`` (the code changes alone).

Quality: old and new fits at ``--seeds`` (default 0 1 2), mAP@``--k`` of Hamming and asymmetric
ranking of the held-out queries (:func:`hashindex.measure.bench_seeds.ranking_maps`), and whether the
codes of the database are identical.

    nice -n 10 python benchmarks/fit_speed.py --old /tmp/old --work /tmp/fitspeed \\
        --out benchmarks/results/fit_speed.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from side_by_side import ENVS, REPO, alternate, commit_of, header, run_in_tree

CHILD = r"""
import hashlib, json, sys, time
a = json.loads(sys.argv[1])
import hashindex
from hashindex.core.config import FitConfig
from hashindex.probe.fit import fit_probe
from hashindex.store.reader import open_embeddings
import torch
db = open_embeddings(a["db"])
t = time.perf_counter()
probe = fit_probe(db, FitConfig(**a["config"]), progress=False)
out = {"seconds": time.perf_counter() - t, "fit_seconds": probe.meta["fit_seconds"], "tree": hashindex.__file__,
       "threads": torch.get_num_threads(), "loss": probe.meta["loss_history"][-1]["loss"]}
if a.get("quality"):
    from hashindex.measure.bench_seeds import ranking_maps
    q = open_embeddings(a["q"])
    xb, xq = db.embeddings(), q.embeddings()
    out["codes_sha1"] = hashlib.sha1(probe.encode(xb).tobytes()).hexdigest()
    out["map"] = ranking_maps(probe, xb, xq, db.labels(), q.labels(), a["k"])
print(json.dumps(out))
"""

SPEC = {
    "model": "synthetic",
    "weights": "random",
    "weights_sha256": None,
    "image_size": 32,
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "mean": [0.5] * 3,
    "std": [0.5] * 3,
}


def make_data(work: Path, n: int, nq: int, dim: int, views: int, classes: int) -> tuple[Path, Path]:
    """``db.h5`` (n rows, ``views`` cached views, labels) and ``q.h5`` (nq held-out rows)."""
    from hashindex.store.writer import EmbeddingsWriter

    rng = np.random.default_rng(0)
    basis = rng.standard_normal((64, dim)).astype(np.float32) / 8
    centres = rng.standard_normal((classes, 64)).astype(np.float32) @ basis
    paths = []
    for name, rows, nv in (("db.h5", n, views), ("q.h5", nq, 0)):
        path = work / name
        paths.append(path)
        if path.exists():
            continue
        y = rng.integers(0, classes, rows)
        x = np.abs(centres[y] + rng.standard_normal((rows, dim), dtype=np.float32) * 1.6)  # pooled features are >= 0
        v = (x[:, None, :] + rng.standard_normal((rows, nv, dim), dtype=np.float32) * 0.6) if nv else None
        attrs = {
            "backbone": json.dumps(SPEC | {"num_features": dim}),
            "augment": "{}",
            "views": nv,
            "seed": 0,
            "source": json.dumps({"kind": "synthetic"}),
            "label_names": json.dumps(None),
        }
        w = EmbeddingsWriter(path, n=rows, dim=dim, views=nv, label_dim=classes, attrs=attrs)
        w.append(
            items_done=rows,
            embeddings=x,
            views=v,
            labels=np.eye(classes, dtype=np.uint8)[y],
            names=[f"{name}-{i}" for i in range(rows)],
            source_index=np.arange(rows),
        )
        w.finish()
    return paths[0], paths[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="source tree of the commit to compare with")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/fit_speed.json")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="old/new pairs per environment")
    ap.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument(
        "--quality-epochs", type=int, default=None, help="epochs of the quality fits (default: the library's)"
    )
    ap.add_argument("--k", type=int, default=100)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    db, q = make_data(a.work, a.n, a.nq, a.dim, a.views, a.classes)
    trees = {"old": a.old.resolve(), "new": REPO}
    commits = {k: commit_of(t) for k, t in trees.items()}
    base = {"db": str(db), "q": str(q), "k": a.k}
    speed = []
    for env_name in a.envs if a.rounds else ():
        rows = {"env": env_name, "env_vars": ENVS[env_name], "old_seconds": [], "new_seconds": []}
        for _, which in alternate(a.rounds):
            res = run_in_tree(trees[which], CHILD, dict(base, config={"epochs": a.epochs}), ENVS[env_name])
            rows[f"{which}_seconds"].append(round(res["seconds"], 2))
            rows[f"{which}_threads"] = res["threads"]
            print(env_name, which, f"{res['seconds']:.1f} s", flush=True)
        o, n = np.median(rows["old_seconds"]), np.median(rows["new_seconds"])
        rows.update(old_median=float(o), new_median=float(n), ratio=round(float(n / o), 3))
        speed.append(rows)
        print(json.dumps(rows), flush=True)
    quality = []
    for seed in a.seeds:
        cfg = {"seed": seed, **({"epochs": a.quality_epochs} if a.quality_epochs else {})}
        res = {
            w: run_in_tree(trees[w], CHILD, dict(base, config=cfg, quality=True), ENVS["both passive"])
            for w in ("old", "new")
        }
        row = {
            "seed": seed,
            "same_codes": res["old"]["codes_sha1"] == res["new"]["codes_sha1"],
            **{f"{w}_map": {k: round(v, 4) for k, v in res[w]["map"].items()} for w in res},
            **{f"{w}_seconds": round(res[w]["seconds"], 1) for w in res},
        }
        quality.append(row)
        print(json.dumps(row), flush=True)
    doc = {
        **header("fit_speed"),
        "commits": commits,
        "data": {"n": a.n, "nq": a.nq, "dim": a.dim, "views": a.views, "classes": a.classes, "synthetic": True},
        "fit": {
            "method": "crovca",
            "bits": 64,
            "epochs": a.epochs,
            "device": "cpu",
            "what": "wall seconds of fit_probe (reading the file, training, recalibration), median of the rounds",
        },
        "speed": speed,
        "quality": {
            "epochs": a.quality_epochs or "library default",
            "k": a.k,
            "env_vars": ENVS["both passive"],
            "rows": quality,
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()


def render(doc: dict) -> list[str]:
    """The BENCHMARKS.md section of a fit_speed.json."""
    d, f = doc["data"], doc["fit"]
    lines = [
        "### Fitting on the CPU: this tree against the previous commit",
        "",
        f"Command: `{doc['command']}`; {doc['date'][:10]}, {doc['machine']['cpu']}, {doc['machine']['cores']} cores (shared; load average "
        f"{doc['machine']['loadavg_at_end'][0]:.1f} at the end). CroVCA {f['bits']} bits, {f['epochs']} epochs on {d['n']:,} synthetic "
        f"{d['dim']}-d rows with {d['views']} views; {f['what']}; old = `{doc['commits']['old'][:7]}`, new = `{doc['commits']['new'][:7]}`, alternating.",
        "",
        "| environment | old s | new s | new / old |",
        "|---|---|---|---|",
    ]
    for s in doc["speed"]:
        lines.append(f"| {s['env']} | {s['old_median']:.1f} | {s['new_median']:.1f} | {s['ratio']:.2f} |")
    q = doc["quality"]["rows"]
    lines += [
        "",
        "Quality of the same fits (mAP@{k}, Hamming / asymmetric), old vs new: ".format(k=doc["quality"]["k"])
        + "; ".join(
            f"seed {r['seed']}: {100 * r['old_map']['hamming']:.1f} / {100 * r['old_map']['asymmetric']:.1f} vs {100 * r['new_map']['hamming']:.1f} / {100 * r['new_map']['asymmetric']:.1f}"
            for r in q
        )
        + ".",
    ]
    return lines
