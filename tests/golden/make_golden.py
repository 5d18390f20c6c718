"""Write a golden set of artifacts in the current formats, for tests/test_golden.py.

    python tests/golden/make_golden.py          # writes tests/golden/<format versions>/

The set is tiny and synthetic (no backbone needed): an embeddings file written by the library's
writer (with labels, views, a non-ASCII name and a recorded failure), a CroVCA probe and a flat
index built from them with the public API (``hashindex.fit_probe``, ``hashindex.build_index(kind="flat")``;
the index folder holds the probe and the manifest), and ``expected.json`` with the codes and the top-k
results that ``hashindex.open_index(...).search`` computes. Commit the folder: a later change that can
no longer read these files, or that ranks them differently, fails the golden test. When a format
version is bumped, run this script again to add a set for the new versions and keep the old ones
(old files must still load).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

N, DIM, BITS, K = 32, 8, 32, 5
SPEC = {
    "model": "golden-synthetic",
    "weights": "random",
    "weights_sha256": None,
    "image_size": 32,
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "num_features": DIM,
}


def versions() -> dict:
    from hashindex.index.manifest import INDEX_FORMAT
    from hashindex.probe.artifact import PROBE_FORMAT
    from hashindex.store.schema import SCHEMA_VERSION

    return {"schema_version": SCHEMA_VERSION, "index_format": INDEX_FORMAT, "probe_format": PROBE_FORMAT}


def set_name(v: dict) -> str:
    return f"schema{v['schema_version']}-index{v['index_format']}-probe{v['probe_format']}"


def make(out: Path) -> Path:
    import hashindex
    from hashindex.core.config import FitConfig
    from hashindex.store.reader import open_embeddings
    from hashindex.store.writer import EmbeddingsWriter

    rng = np.random.default_rng(20240601)
    centers = rng.standard_normal((3, DIM)) * 3
    y = np.arange(N + 1) % 3
    x = (centers[y] + rng.standard_normal((N + 1, DIM))).astype(np.float32)
    views = (x[:, None] + 0.5 * rng.standard_normal((N + 1, 2, DIM))).astype(np.float32)
    labels = np.eye(3, dtype=np.uint8)[y]
    names = [f"class{c}/img{i:02d}.png" for i, c in enumerate(y)]
    names[3] = "class0/café-ß.png"  # UTF-8 names
    failed = 7  # item 7 of the source "could not be decoded": it gets no row
    keep = [i for i in range(N + 1) if i != failed]

    out.mkdir(parents=True)
    attrs = {
        "backbone": json.dumps(SPEC, sort_keys=True),
        "augment": "{}",
        "views": 2,
        "seed": 0,
        "source": json.dumps({"kind": "synthetic", "location": "golden", "split": None, "n": N + 1}),
        "label_names": json.dumps(["zero", "one", "two"]),
    }
    w = EmbeddingsWriter(out / "embeddings.h5", n=N + 1, dim=DIM, views=2, label_dim=3, attrs=attrs)
    for lo in range(0, N + 1, 8):  # several batches, as embed writes them
        rows = [i for i in keep if lo <= i < lo + 8]
        fails = (
            [(failed, names[failed], "UnidentifiedImageError", "cannot identify image file")]
            if lo <= failed < lo + 8
            else []
        )
        w.append(
            items_done=min(lo + 8, N + 1),
            embeddings=x[rows],
            views=views[rows],
            labels=labels[rows],
            names=[names[i] for i in rows],
            source_index=rows,
            failures=fails,
            embed_seconds=0.0,
        )
    w.finish(device="cpu")
    emb = open_embeddings(out / "embeddings.h5", verify=True)

    probe_dir = out / "probe-tmp"
    hashindex.fit_probe(emb, probe_dir, FitConfig(method="crovca", bits=BITS, epochs=3, batch_size=16, seed=0))
    # A flat index, as in every set: the sets stay comparable (the default kind, auto, chooses by timing).
    hashindex.build_index(emb, probe_dir, out / "index", kind="flat")
    shutil.rmtree(probe_dir)  # the index folder holds its own copy of the probe

    queries = np.concatenate([emb.embeddings()[:4], (centers + 0.1).astype(np.float32)])
    ix = hashindex.open_index(out / "index")  # as a user opens it (verified)
    assert (ix.kind, ix.bits, len(ix)) == ("flat", BITS, emb.n)
    res = ix.search(queries, k=K, device="cpu")
    probe = ix.snapshot.probe
    expected = {
        "versions": versions(),
        "n": emb.n,
        "dim": DIM,
        "bits": BITS,
        "k": K,
        "queries": queries.tolist(),
        "codes_hex": [c.tobytes().hex() for c in probe.encode(emb.embeddings())],
        "query_codes_hex": [c.tobytes().hex() for c in probe.encode(queries)],
        "distances": np.asarray(res.distances).tolist(),
        "ids": np.asarray(res.ids).tolist(),
    }
    expected["names"] = emb.names()
    expected["failures"] = emb.failures()
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    out = Path(argv[1]) if len(argv) > 1 else here / set_name(versions())
    if out.exists():
        print(
            f"{out} exists: golden sets are never regenerated in place (delete it on purpose if you must)",
            file=sys.stderr,
        )
        return 2
    make(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
