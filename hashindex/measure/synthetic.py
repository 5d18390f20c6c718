"""Synthetic code collections for speed figures at scales no embeddings file reaches.

Uniformly random codes have no neighbourhoods, so an IVF index has nothing to exploit on them
and its recall figures would mean nothing; these codes are drawn around random centres, each
bit flipped with probability 1/8 (the AND of three random bits), as codes of real collections
cluster. The same collection serves flat, lookup and IVF, so their figures compare.
"""

from __future__ import annotations

import time

import numpy as np

CENTRES = 4096


def random_centres(bits: int, rng: np.random.Generator, count: int = CENTRES) -> np.ndarray:
    """``count`` random ``bits``-bit codes."""
    return rng.integers(0, 256, (count, bits // 8), dtype=np.uint8)


def iter_clustered(n: int, centres: np.ndarray, rng: np.random.Generator, chunk: int = 1 << 20):
    """Chunks of ``n`` codes, each a random centre with every bit flipped with probability 1/8."""
    nb = centres.shape[1]
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        flips = rng.integers(0, 256, (3, m, nb), dtype=np.uint8)
        yield centres[rng.integers(0, len(centres), m)] ^ (flips[0] & flips[1] & flips[2])


def clustered_codes(n: int, bits: int, rng: np.random.Generator, centres: int = CENTRES) -> np.ndarray:
    """``(n, bits // 8)`` uint8 codes around ``centres`` fresh random centres (peak memory: the
    codes and one chunk's draws)."""
    out = np.empty((n, bits // 8), np.uint8)
    s = 0
    for c in iter_clustered(n, random_centres(bits, rng, centres), rng):
        out[s : s + len(c)] = c
        s += len(c)
    return out


def recall_within(d: np.ndarray, ids: np.ndarray, flat_d: np.ndarray) -> float:
    """Recall@k of a search against the flat one, counting ties: the fraction of the k places
    filled (id >= 0) by an item at most as far as the flat k-th distance."""
    k = flat_d.shape[1]
    return float(((ids >= 0) & (d <= flat_d[:, -1:])).sum(1).mean() / k)


def ivf_at_recall(codes: np.ndarray, queries: np.ndarray, flat_d: np.ndarray, nlist: int, target: float = 0.95) -> dict:
    """Build an IVF index over ``codes`` (trained on a sample, as ``build`` does), then double
    nprobe from 1 until recall@k against the flat results ``flat_d`` reaches ``target``.

    Returns ``{"nlist", "build_seconds", "sweep": [{"nprobe", "qps", "recall"}], "at_target"}``
    (``at_target`` None when even nprobe = nlist misses it).
    """
    from hashindex.core.config import IndexConfig
    from hashindex.index.build import make_faiss_index

    t0 = time.perf_counter()
    fi = make_faiss_index(codes, IndexConfig("ivf", nlist, 1))
    build = time.perf_counter() - t0
    sweep, at, nprobe = [], None, 1
    while at is None and nprobe <= nlist:
        fi.nprobe = nprobe
        t0 = time.perf_counter()
        d, ids = fi.search(queries, flat_d.shape[1])
        row = {
            "nprobe": nprobe,
            "qps": len(queries) / (time.perf_counter() - t0),
            "recall": recall_within(d, ids, flat_d),
        }
        sweep.append(row)
        at = row if row["recall"] >= target else None
        nprobe *= 2
    return {"nlist": nlist, "build_seconds": build, "sweep": sweep, "at_target": at, "index": fi}
