"""How long should the CroVCA probe train on a small collection (1,000-5,000 images) when the
user does not say? Measures mAP@100 (Hamming ranking, flat index, ties by id) of CroVCA against
the length of its schedule (FitConfig.min_steps: the step floor of ``epochs=None``), over seeds,
beside ITQ and float cosine on the same split; then, on database subsets of a few sizes, below
which size CroVCA stops beating ITQ and float cosine.

    .venv/bin/python benchmarks/schedule.py --cache /work/runs/schedule --name small
        # builds the collections (PNG class folders) and embeds each once into CACHE/<name>.h5
        # (hashindex.embed, views=2, 112 px, bilinear; reused on later runs), fits every
        # (collection, bits, min_steps, seed), keeps each fit's figures in CACHE/runs.jsonl (a re-run
        # skips what is there), writes benchmarks/results/schedule_NAME.json and prints Markdown.

Collections (each split once into database and held-out queries, ``--query-frac``):

- ``fmnist-train-1k``: 1,000 random Fashion-MNIST training images;
- ``fmnist-train-5k``: 5,000 other random training images (disjoint from the 1k ones);
- ``fmnist-test-2k``: 2,000 random test-split images;
- ``digits``: scikit-learn's 1,797 8x8 digits, upscaled to 64x64 (bilinear).

The size sweep (``--sizes``) fits on random database subsets of ``--size-collections`` and
queries with that collection's held-out queries.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle-boot")
COLLECTIONS = ("fmnist-train-1k", "fmnist-train-5k", "fmnist-test-2k", "digits")
DEFAULT_STEPS = 1000  # the default before this measurement (now FitConfig.min_steps = 500)


# ----------------------------------------------------------------------------- collections


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def collection_images(name: str) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Grayscale uint8 images, int labels, class names of a named collection (fixed seeds)."""
    if name.startswith("fmnist-train"):
        x, y = _idx(FMNIST / "train-images-idx3-ubyte.gz"), _idx(FMNIST / "train-labels-idx1-ubyte.gz")
        perm = np.random.default_rng(20261203).permutation(len(x))
        rows = perm[:1000] if name == "fmnist-train-1k" else perm[1000:6000]  # disjoint subsets
        return [x[i] for i in rows], y[rows].astype(int), list(FMNIST_CLASSES)
    if name == "fmnist-test-2k":
        x, y = _idx(FMNIST / "t10k-images-idx3-ubyte.gz"), _idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
        rows = np.random.default_rng(7).permutation(len(x))[:2000]
        return [x[i] for i in rows], y[rows].astype(int), list(FMNIST_CLASSES)
    if name == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        d = load_digits()
        imgs = [
            np.asarray(Image.fromarray((im * (255 / 16)).round().astype(np.uint8)).resize((64, 64), Image.BILINEAR))
            for im in d.images
        ]
        return imgs, d.target.astype(int), [str(c) for c in range(10)]
    raise SystemExit(f"unknown collection {name!r}: use {', '.join(COLLECTIONS)}")


def prepare(name: str, cache: Path) -> Path:
    """PNG class folders and their embeddings file (made once, reused)."""
    import hashindex

    h5 = cache / f"{name}.h5"
    if h5.exists():
        return h5
    from PIL import Image

    folder = cache / "images" / name
    if not (folder / ".complete").exists():
        imgs, y, classes = collection_images(name)
        for c in classes:
            (folder / c).mkdir(parents=True, exist_ok=True)
        for i, (im, lab) in enumerate(zip(imgs, y)):
            Image.fromarray(im).save(folder / classes[lab] / f"{i:05d}.png")
        (folder / ".complete").write_text(str(len(imgs)))
    t = time.perf_counter()
    hashindex.embed(str(folder), h5, views=2, image_size=112, interpolation="bilinear")
    print(f"embedded {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return h5


# ----------------------------------------------------------------------------- row subsets


def subset_file(base, rows: np.ndarray, path: Path):
    """The rows ``rows`` of an opened embeddings file written as an embeddings file of their own
    (same provenance, ``source.subset_of`` naming the parent; made once), opened and verified."""
    from hashindex.store.reader import open_embeddings
    from hashindex.store.writer import EmbeddingsWriter

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = np.asarray(rows)
        raw = base._raw_attrs
        attrs = {
            k: v for k, v in raw.items() if k not in ("checksums", "complete", "items_done", "rows", "schema_version")
        }
        attrs["source"] = json.dumps(dict(base.attrs["source"], subset_of=str(base.path), n=len(rows)))
        names, views = base.names(), base.views()
        w = EmbeddingsWriter(
            path, n=len(rows), dim=base.dim, views=base.num_views, label_dim=base.labels().shape[1], attrs=attrs
        )
        w.append(
            items_done=len(rows),
            embeddings=base.embeddings()[rows],
            views=None if views is None else views[rows],
            labels=base.labels()[rows],
            names=[names[i] for i in rows],
            source_index=np.arange(len(rows)),
        )
        w.finish()
    return open_embeddings(path, verify=True)


def split_rows(n: int, frac: float, seed: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (database rows, query rows): a random ``frac`` of the rows are queries."""
    perm = np.random.default_rng(seed).permutation(n)
    nq = int(round(frac * n))
    return np.sort(perm[nq:]), np.sort(perm[:nq])


# ----------------------------------------------------------------------------- measurement


def hamming_map(probe, xb, xq, yb, yq, k: int) -> float:
    from hashindex.core.config import IndexConfig
    from hashindex.measure.metrics import mean_average_precision, relevance
    from hashindex.search.engines import CodeIndex

    _, ids = CodeIndex.from_codes(probe.encode(xb), IndexConfig("flat")).search(probe.encode(xq), min(k, len(xb)))
    return mean_average_precision(relevance(yq, yb, ids))


def float_map(xb, xq, yb, yq, k: int) -> float:
    from hashindex.measure.metrics import mean_average_precision, relevance
    from hashindex.search.exact import cosine_knn

    _, ids = cosine_knn(xq, xb, min(k, len(xb)))
    return mean_average_precision(relevance(yq, yb, ids))


class Runs:
    """Every fit's figures, one JSON line each, keyed so a re-run skips what was measured."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
        self.done = {self.key(r) for r in self.rows}

    @staticmethod
    def key(r: dict) -> str:
        return json.dumps([r[k] for k in ("collection", "n", "nq", "topk", "method", "bits", "min_steps", "seed")])

    def has(self, **r) -> bool:
        return self.key(r) in self.done

    def add(self, r: dict) -> None:
        with self.path.open("a") as f:
            print(json.dumps(r), file=f, flush=True)
        self.rows.append(r)
        self.done.add(self.key(r))
        print(json.dumps(r), file=sys.stderr, flush=True)


def measure(runs: Runs, coll: str, db, xq, yq, *, bits, steps, seeds, topk, baselines=True) -> None:
    """Fit and measure CroVCA at every (bits, min_steps, seed), ITQ at every (bits, seed), float once."""
    import hashindex
    from hashindex.core.config import FitConfig

    xb, yb = db.embeddings(), db.labels()
    base = dict(collection=coll, n=db.n, nq=len(xq), topk=topk)
    if baselines and not runs.has(**base, method="float", bits=0, min_steps=None, seed=None):
        runs.add(dict(base, method="float", bits=0, min_steps=None, seed=None, map=float_map(xb, xq, yb, yq, topk)))
    for b in bits:
        for seed in seeds:
            if baselines and not runs.has(**base, method="itq", bits=b, min_steps=None, seed=seed):
                t = time.perf_counter()
                p = hashindex.fit_probe(db, config=FitConfig(method="itq", bits=b, seed=seed), verify=False)
                fit_s = time.perf_counter() - t
                runs.add(
                    dict(
                        base,
                        method="itq",
                        bits=b,
                        min_steps=None,
                        seed=seed,
                        map=hamming_map(p, xb, xq, yb, yq, topk),
                        fit_seconds=round(fit_s, 2),
                    )
                )
            for ms in steps:
                if runs.has(**base, method="crovca", bits=b, min_steps=ms, seed=seed):
                    continue
                t = time.perf_counter()
                p = hashindex.fit_probe(db, config=FitConfig(bits=b, min_steps=ms, seed=seed), verify=False)
                fit_s = time.perf_counter() - t
                sched = p.meta["schedule"]
                runs.add(
                    dict(
                        base,
                        method="crovca",
                        bits=b,
                        min_steps=ms,
                        seed=seed,
                        map=hamming_map(p, xb, xq, yb, yq, topk),
                        fit_seconds=round(fit_s, 2),
                        epochs=sched["epochs"],
                        steps=sched["steps"],
                        bit_balance_min=p.meta["bit_balance"]["min"],
                    )
                )


def cross_check(db, q, topk: int, work: Path) -> dict:
    """The same figure through the public pipeline: fit_probe -> build_index(kind="flat") -> evaluate."""
    import shutil

    import hashindex
    from hashindex.core.config import FitConfig

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    probe = hashindex.fit_probe(db, work / "probe", config=FitConfig(bits=64, min_steps=100, seed=0), verify=False)
    ix = hashindex.build_index(db, work / "probe", work / "index", kind="flat", verify=False)
    ev = hashindex.evaluate(ix, q, topk=topk)
    mine = hamming_map(probe, db.embeddings(), q.embeddings(), db.labels(), q.labels(), topk)
    ours_float = float_map(db.embeddings(), q.embeddings(), db.labels(), q.labels(), topk)
    return {
        "evaluate_map": ev["map"],
        "direct_map": mine,
        "evaluate_float_map": ev["float_map"],
        "direct_float_map": ours_float,
    }


# ----------------------------------------------------------------------------- summary


def summarize(rows: list[dict]) -> dict:
    """Per (collection, n, method, bits, min_steps): mean / min / max over seeds, mean fit seconds, steps."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["collection"], r["n"], r["method"], r["bits"], r["min_steps"]), []).append(r)
    out = []
    for (c, n, m, b, ms), rs in groups.items():
        maps = np.array([r["map"] for r in rs])
        fit = [r["fit_seconds"] for r in rs if "fit_seconds" in r]
        out.append(
            {
                "collection": c,
                "n": n,
                "nq": rs[0]["nq"],
                "method": m,
                "bits": b,
                "min_steps": ms,
                "seeds": [r["seed"] for r in rs],
                "maps": [round(float(x), 5) for x in maps],
                "mean": float(maps.mean()),
                "min": float(maps.min()),
                "max": float(maps.max()),
                "fit_seconds": float(np.mean(fit)) if fit else None,
                "steps": rs[0].get("steps"),
                "epochs": rs[0].get("epochs"),
            }
        )
    return {"groups": out}


def _g(groups, **kw):
    return [g for g in groups if all(g[k] == v for k, v in kw.items())]


def compare(groups: list[dict], steps: list[int], reference: int = DEFAULT_STEPS) -> list[dict]:
    """Each step floor against today's default on every (collection, n, bits): differences of mean and min."""
    out = []
    for ms in steps:
        deltas = []
        for ref in _g(groups, method="crovca", min_steps=reference):
            cand = _g(groups, method="crovca", collection=ref["collection"], n=ref["n"], bits=ref["bits"], min_steps=ms)
            if cand:
                c = cand[0]
                deltas.append(
                    {
                        "collection": ref["collection"],
                        "n": ref["n"],
                        "bits": ref["bits"],
                        "d_mean": c["mean"] - ref["mean"],
                        "d_min": c["min"] - ref["min"],
                        "fit_seconds": c["fit_seconds"],
                        "ref_fit_seconds": ref["fit_seconds"],
                    }
                )
        if deltas:
            out.append(
                {
                    "min_steps": ms,
                    "cases": deltas,
                    "worst_d_mean": min(d["d_mean"] for d in deltas),
                    "worst_d_min": min(d["d_min"] for d in deltas),
                    "never_lower": all(d["d_mean"] >= 0 and d["d_min"] >= 0 for d in deltas),
                    "time_ratio": float(np.mean([d["fit_seconds"] / d["ref_fit_seconds"] for d in deltas])),
                }
            )
    return out


def markdown(doc: dict) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    groups = doc["summary"]["groups"]
    L = [
        f"Command: `{doc['command']}`; {doc['date']}; {doc['machine']}.",
        f"mAP@{doc['topk']} (%), Hamming ranking (flat, ties by id), queries held out of each collection; "
        f"CroVCA mean / min over seeds {doc['seeds']}; ITQ mean over the same seeds; fit s = mean wall seconds of one fit.",
        "",
    ]
    steps = doc["steps"]
    head = (
        "| collection | db / q | bits | float | ITQ | "
        + " | ".join(f"CroVCA min_steps {s if s else '0 (5 ep)'}" for s in steps)
        + " |"
    )
    L += [head, "|" + "---|" * (5 + len(steps))]
    for c in doc["collections"]:
        for b in doc["bits"]:
            full = [g for g in _g(groups, collection=c, method="crovca", bits=b) if g["n"] == doc["db_n"][c]]
            if not full:
                continue
            n = full[0]["n"]
            fl = _g(groups, collection=c, n=n, method="float")
            itq = _g(groups, collection=c, n=n, method="itq", bits=b)
            cells = []
            for s in steps:
                g = _g(full, min_steps=s)
                cells.append(
                    f"{pct(g[0]['mean'])} / {pct(g[0]['min'])} ({g[0]['steps']} st, {g[0]['fit_seconds']:.0f} s)"
                    if g
                    else "–"
                )
            L.append(
                f"| {c} | {n:,} / {full[0]['nq']:,} | {b} | {pct(fl[0]['mean']) if fl else '–'} | "
                f"{pct(itq[0]['mean']) if itq else '–'} | " + " | ".join(cells) + " |"
            )
    L += [
        "",
        f"Against the former default (min_steps {DEFAULT_STEPS}), worst over collections and bits (points):",
        "",
        "| min_steps | worst Δ mean | worst Δ min | never lower | fit time vs default |",
        "|---|---|---|---|---|",
    ]
    for c in doc["comparison"]:
        L.append(
            f"| {c['min_steps']} | {100 * c['worst_d_mean']:+.2f} | {100 * c['worst_d_min']:+.2f} | "
            f"{'yes' if c['never_lower'] else 'no'} | {100 * c['time_ratio']:.0f}% |"
        )
    if doc.get("sizes"):
        L += [
            "",
            "Small databases (random subsets of the database, same queries): mAP@100 mean / min over seeds.",
            "",
            "| collection | db | bits | float | ITQ (mean) | "
            + " | ".join(f"CroVCA {s}" for s in doc["size_steps"])
            + " |",
            "|" + "---|" * (5 + len(doc["size_steps"])),
        ]
        for c in doc["size_collections"]:
            for n in doc["sizes"]:
                for b in doc["size_bits"]:
                    fl = _g(groups, collection=c, n=n, method="float")
                    itq = _g(groups, collection=c, n=n, method="itq", bits=b)
                    cells = []
                    for s in doc["size_steps"]:
                        g = _g(groups, collection=c, n=n, method="crovca", bits=b, min_steps=s)
                        cells.append(f"{pct(g[0]['mean'])} / {pct(g[0]['min'])}" if g else "–")
                    L.append(
                        f"| {c} | {n:,} | {b} | {pct(fl[0]['mean']) if fl else '–'} | "
                        f"{pct(itq[0]['mean']) if itq else '–'} | " + " | ".join(cells) + " |"
                    )
    if doc.get("cross_check"):
        L += ["", f"Cross-check through build_index(kind='flat') + evaluate: {doc['cross_check']}"]
    return "\n".join(L)


# ----------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cache", type=Path, default=Path("/work/runs/schedule"), help="collections, embeddings, runs.jsonl"
    )
    ap.add_argument("--name", default="small", help="results/schedule_NAME.json")
    ap.add_argument("--collections", default=",".join(COLLECTIONS))
    ap.add_argument("--bits", default="32,64")
    ap.add_argument("--steps", default="0,100,200,300,500,1000", help="min_steps values (0: 5 epochs)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--query-frac", type=float, default=0.2)
    ap.add_argument("--sizes", default="100,300,1000", help="database subset sizes ('' for none)")
    ap.add_argument("--size-collections", default="fmnist-train-5k,digits")
    ap.add_argument("--size-bits", default="64")
    ap.add_argument("--size-steps", default="0,100,300,1000", help="min_steps values of the size sweep")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cross-check", action="store_true", help="also measure one fit through build_index + evaluate")
    ap.add_argument("--report-only", action="store_true", help="summarise runs.jsonl, fit nothing")
    a = ap.parse_args(argv)

    import torch

    from hashindex.measure.bench import machine_info
    from hashindex.store.reader import open_embeddings

    torch.set_num_threads(a.threads)
    a.cache.mkdir(parents=True, exist_ok=True)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    colls, bits, steps, seeds = a.collections.split(","), ints(a.bits), ints(a.steps), ints(a.seeds)
    sizes, size_steps = ints(a.sizes), ints(a.size_steps)
    size_colls = [c for c in a.size_collections.split(",") if c and sizes]
    runs = Runs(a.cache / "runs.jsonl")
    t0 = time.perf_counter()
    db_n, check = {}, None
    for c in colls:
        h5 = prepare(c, a.cache)
        emb = open_embeddings(h5)
        db_rows, q_rows = split_rows(emb.n, a.query_frac)
        split = a.cache / "splits" / c
        db, q = subset_file(emb, db_rows, split / "db.h5"), subset_file(emb, q_rows, split / "q.h5")
        db_n[c] = db.n
        if a.report_only:
            continue
        if a.cross_check and check is None:
            check = dict(cross_check(db, q, a.topk, a.cache / "cross_check"), collection=c)
            print("cross-check", check, file=sys.stderr, flush=True)
        xq, yq = q.embeddings(), q.labels()
        measure(runs, c, db, xq, yq, bits=bits, steps=steps, seeds=seeds, topk=a.topk)
        if c in size_colls:
            for n in sizes:
                if n >= db.n:
                    continue
                sub = np.sort(np.random.default_rng(1000 + n).choice(db.n, n, replace=False))
                measure(
                    runs,
                    c,
                    subset_file(emb, db_rows[sub], split / f"db{n}.h5"),
                    xq,
                    yq,
                    bits=ints(a.size_bits),
                    steps=size_steps,
                    seeds=seeds,
                    topk=a.topk,
                )
    mine = [
        r
        for r in runs.rows
        if r["collection"] in colls
        and r["topk"] == a.topk
        and (r["seed"] is None or r["seed"] in seeds)
        and (r["method"] != "crovca" or r["min_steps"] in set(steps) | set(size_steps))
        and (r["bits"] in set(bits) | set(ints(a.size_bits)) or r["method"] == "float")
    ]
    groups = summarize(mine)
    full = [g for g in groups["groups"] if g["n"] == db_n[g["collection"]]]
    m = machine_info()
    doc = {
        "command": "python benchmarks/schedule.py " + shlex.join(argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{m['cpu']}, {m['cores']} cores, {platform.platform()}; torch {m['torch']}, faiss {m['faiss']}; shared, no GPU",
        "collections": colls,
        "db_n": db_n,
        "bits": bits,
        "steps": steps,
        "seeds": seeds,
        "topk": a.topk,
        "query_frac": a.query_frac,
        "sizes": sizes,
        "size_collections": size_colls,
        "size_steps": size_steps,
        "size_bits": ints(a.size_bits),
        "summary": groups,
        "comparison": compare(full, steps),
        "size_comparison": compare([g for g in groups["groups"] if g["n"] != db_n[g["collection"]]], size_steps),
        "cross_check": check,
        "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
        "runs": mine,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"schedule_{a.name}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    print(f"\n{out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
