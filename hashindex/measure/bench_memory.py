"""Memory of a flat binary index: faiss's own sizes, and RSS growth measured in a fresh process.

An RSS delta taken inside the bench process reads 0 for indexes of a few MB: the allocator reuses
pages the bench already holds. faiss's sizes are exact (the serialised index, and the
``code_size × ntotal`` bytes of its codes); the RSS growth of adding the codes is measured in a
fresh child process, and only at scales where the index is several MB (``rss_min_items``), so
that what is measured is the index and not the allocator's noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

# RSS deltas under this are reported as below resolution (None), never as a number.
RSS_RESOLUTION = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def faiss_sizes(fi) -> dict:
    """Bytes per item of a faiss binary index by faiss's own accounting: the serialised index
    and the stored codes (``code_size × ntotal``)."""
    import faiss

    n = max(1, fi.ntotal)
    return {
        "index_bytes_per_item": len(faiss.serialize_index_binary(fi)) / n,
        "code_bytes_per_item": fi.code_size * fi.ntotal / n,
    }


def rss_growth(n: int, bits: int, seed: int = 0) -> int:
    """Bytes of RSS a fresh process grows by when ``n`` random ``bits``-bit codes are added to an
    ``IndexBinaryFlat`` (the codes array is allocated and touched before the first reading)."""
    out = subprocess.run(
        [sys.executable, "-m", "hashindex.measure.bench_memory", str(n), str(bits), str(seed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["rss_growth"])


def flat_memory(fi, n: int, bits: int, seed: int, rss_min_items: int) -> dict:
    """The memory figures of one synthetic flat index: faiss's sizes, and RSS growth per item
    (``ram_bytes_per_item``; None with ``ram_note`` saying why when not measured or below
    resolution)."""
    out = faiss_sizes(fi)
    if n < rss_min_items:
        return dict(out, ram_bytes_per_item=None, ram_note=f"not measured (below {rss_min_items:,} items)")
    grown = rss_growth(n, bits, seed)
    if grown < RSS_RESOLUTION:
        return dict(out, ram_bytes_per_item=None, ram_note=f"below resolution ({grown:,} bytes < {RSS_RESOLUTION:,})")
    return dict(out, ram_bytes_per_item=grown / n, ram_note="fresh process")


def _child(n: int, bits: int, seed: int) -> None:
    import faiss

    codes = np.random.default_rng(seed).integers(0, 256, (n, bits // 8), dtype=np.uint8)
    fi = faiss.IndexBinaryFlat(bits)
    before = _rss_bytes()
    fi.add(codes)
    print(json.dumps({"rss_growth": _rss_bytes() - before, "ntotal": int(fi.ntotal)}))


if __name__ == "__main__":
    _child(*map(int, sys.argv[1:4]))
