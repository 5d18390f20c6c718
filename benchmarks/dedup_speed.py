"""The speed runs of the near-duplicate benchmark (see ``dedup.py``): the range self-join of
millions of synthetic clustered codes with planted near-duplicates, checked against a brute
force on a sample. (Runs before the bucket join asked a range query of every row and could stop
early, extrapolating; their files carry those fields.)"""

from __future__ import annotations

import resource
import time

import numpy as np
from dedup_scoring import brute_pairs


def centres_for(n: int, per_million: int | None) -> int:
    """Centres of a collection of ``n`` codes: the library's fixed count, or ``per_million`` per
    million codes (a collection whose clusters keep their size as it grows)."""
    from hashindex.measure.synthetic import CENTRES

    return CENTRES if per_million is None else max(1, round(n * per_million / 1_000_000))


def planted_codes(n: int, bits: int, plant: float, radius: int, rng: np.random.Generator, centres: int):
    """``n`` codes around ``centres`` centres, the last ``plant * n`` of which are copies of
    earlier rows with 1..radius bits flipped; returns codes and the planted pairs (row, copy row)."""
    from hashindex.measure.synthetic import clustered_codes

    k = int(n * plant)
    codes = np.empty((n, bits // 8), np.uint8)
    codes[: n - k] = clustered_codes(n - k, bits, rng, centres)
    src = rng.choice(n - k, k, replace=False)
    flips = np.zeros((k, bits), bool)
    nflip = rng.integers(1, max(1, radius) + 1, k)
    for t in range(k):
        flips[t, rng.choice(bits, nflip[t], replace=False)] = True
    codes[n - k :] = codes[src] ^ np.packbits(flips, axis=1)
    return codes, np.stack([src, np.arange(n - k, n)], 1)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def speed(args, log) -> list[dict]:
    from hashindex.dedup.find import leader_groups
    from hashindex.index.mih import MIHTables
    from hashindex.search.ranges import range_tables, self_join

    bits = 64
    out = []
    for n, frac in [(n, f) for n in args.scales for f in args.speed_radii]:
        radius = int(round(frac * bits))
        rng = np.random.default_rng(args.seed)
        centres = centres_for(n, args.centres_per_million)
        t0 = time.perf_counter()
        codes, planted = planted_codes(n, bits, args.plant, radius, rng, centres)
        gen_s = time.perf_counter() - t0
        # exactness on a sample first (cheap), with planted pairs in it
        half = min(args.check_sample // 4, len(planted))
        pick = planted[rng.choice(len(planted), half, replace=False)].reshape(-1)
        sample = np.unique(np.concatenate([pick, rng.choice(n, args.check_sample - len(pick), replace=False)]))
        sc = codes[sample]
        got = self_join(MIHTables.build(sc, range_tables(bits, len(sc), radius)), sc, radius)
        ref = brute_pairs(sc, radius)
        sample_exact = all(np.array_equal(a, b) for a, b in zip(got, ref))
        # the dedup of all rows
        m = range_tables(bits, n, radius)
        t0 = time.perf_counter()
        tables = MIHTables.build(codes, m)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        i, j, d = self_join(tables, codes, radius)
        join_s = time.perf_counter() - t0
        del tables
        t0 = time.perf_counter()
        groups = leader_groups(n, i, j)
        group_s = time.perf_counter() - t0
        pk = np.sort(planted, 1)
        found = np.isin(pk[:, 0] * n + pk[:, 1], i * n + j).mean()
        row = {
            "n": n,
            "bits": bits,
            "centres": centres,
            "radius_bits": radius,
            "tables": m,
            "planted_pairs": len(planted),
            "rows_joined": n,
            "complete": True,
            "generate_seconds": round(gen_s, 1),
            "tables_seconds": round(build_s, 1),
            "join_seconds": round(join_s, 1),
            "group_seconds": round(group_s, 1),
            "dedup_seconds": round(build_s + join_s + group_s, 1),
            "pairs": len(i),
            "groups": len(groups),
            "planted_found": round(float(found), 6),
            "sample_rows": len(sample),
            "sample_pairs": len(ref[0]),
            "sample_exact": sample_exact,
            "peak_rss_gb": round(rss_gb(), 2),
        }
        out.append(row)
        log(f"speed {n:,}: {row}")
        del codes, i, j, d, groups
    return out
