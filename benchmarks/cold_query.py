"""Cold `query --embeddings` on a large index: this tree against an earlier commit, alternating.

Each run is a fresh process that imports hashindex from one tree, opens the index (verifying its
files), searches one query and names its hits; it reports wall seconds and peak RSS
(``ru_maxrss``). The earlier commit is checked out in a temporary worktree.

    python benchmarks/cold_query.py --old 8c7a1ed --index /work/scratch/scale/index --queries q.h5 \
        --out benchmarks/results/cold_query.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from hashindex.api.query import query_embeddings_file
r = query_embeddings_file(sys.argv[2], sys.argv[3], 10, limit=1, device="cpu")
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "hits": [h["name"] for h in r[0]["results"]]}))
"""


def run(tree: Path, index: str, queries: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # cwd outside any source tree: the child imports hashindex from `tree` only
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), index, queries],
        cwd=tempfile.gettempdir(),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="Earlier commit to compare with.")
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True, help="Embeddings file of the queries (its first row is searched).")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), a.old], check=True, capture_output=True
        )
        try:
            runs = {"old": [], "new": []}
            for _ in range(a.repeats):
                for kind, tree in (("old", old), ("new", REPO)):
                    runs[kind].append(run(tree, a.index, a.queries))
                    print(kind, json.dumps(runs[kind][-1])[:200], flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    assert runs["old"][0]["hits"] == runs["new"][0]["hits"], "the two trees answer differently"
    import faiss

    ntotal = faiss.read_index_binary(str(Path(a.index) / "index.faiss"), faiss.IO_FLAG_MMAP_IFC).ntotal
    doc = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "ntotal": ntotal,
        "old": a.old,
        "new": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "command": "python benchmarks/cold_query.py " + " ".join(sys.argv[1:]),
        "runs": runs,
        "best": {
            k: {
                "seconds": round(min(r["seconds"] for r in v), 2),
                "peak_rss_bytes": min(r["peak_rss_bytes"] for r in v),
            }
            for k, v in runs.items()
        },
    }
    print(json.dumps(doc["best"]))
    if a.out:
        a.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
