"""Finding near-duplicates in a snapshot: candidate pairs within a Hamming radius (an exact range
self-join by multi-index hashing), confirmed by the cosine of the items' float embeddings or, below
it, by the agreement of their pixels (:mod:`hashindex.dedup.pixels`), then grouped around leaders.

Grouping: the item with the most confirmed near-duplicates (ties: the lowest id) leads a group of
itself and its confirmed near-duplicates not yet grouped; then the next such item among the rest.
Every member is a confirmed near-duplicate of its leader, so a group spans at most two edits
(member, leader, member) and a chain of small edits (A~B, B~C, C~D, ...) cannot join two pictures
that are far apart, as connected components would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from hashindex.core.config import DedupConfig
from hashindex.core.errors import InputError
from hashindex.dedup.pixels import against_rows, pair_dots, pixel_scores
from hashindex.index.mih import MIHTables
from hashindex.search.ranges import range_tables, self_join, within

logger = logging.getLogger(__name__)
COSINE_BYTES = 1 << 30  # float rows held at once while confirming candidates
PIXEL_CHECKS = 256  # candidates of one query whose images are read, when the cosine did not confirm them


@dataclass
class Duplicates:
    """Groups of near-duplicates of a snapshot (rows are the snapshot's).

    Attributes:
        groups: per group, its rows (the leader first).
        pairs: confirmed pairs ``(row_a, row_b, hamming, cosine, pixels)`` as arrays (cosine NaN
            without float embeddings; pixels NaN where the pixels were not looked at: confirmed
            by cosine, or no readable images).
        radius, min_cosine, min_pixels: the thresholds used; candidates: candidate pairs found.
    """

    groups: list[np.ndarray]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    radius: int
    min_cosine: float | None
    min_pixels: float | None
    candidates: int
    seconds: dict = field(default_factory=dict)


def tables_for(snap, radius: int) -> MIHTables:
    """Multi-index tables of the snapshot's codes suited to a range search of ``radius``: the
    index's own when it has them with that many substrings, else built now."""
    m = range_tables(snap.bits, snap.ntotal, radius)
    engine = snap.index.engine
    tables = getattr(engine, "tables", None)
    if tables is not None and tables.m == m and len(tables.order[0]) == snap.ntotal:
        return tables
    return MIHTables.build(np.asarray(snap.codes), m)


def candidate_pairs(snap, radius: int, *, progress: bool = False, max_pairs: int | None = None):
    """Every pair of rows within ``radius``: ``(i, j, distance)`` with i < j (exact).

    Raises:
        InputError: more than ``max_pairs`` of them (when given).
    """
    return self_join(tables_for(snap, radius), snap.codes, radius, progress=progress, max_pairs=max_pairs)


def cosines(snap, i: np.ndarray, j: np.ndarray, budget: int = COSINE_BYTES) -> np.ndarray | None:
    """Cosine similarity of the float embeddings of each pair of rows; None when the snapshot's
    float embeddings are not available. Each row involved is read and normalised once (pairs
    share rows: a dense collection has thousands of candidates per item), ``budget`` bytes of
    rows at a time."""
    rows = snap.float_rows()
    out = np.empty(len(i), np.float32)
    try:
        held = max(2, budget // (4 * rows.shape[1]))  # rows in memory at once
        whole = len(np.unique(np.concatenate([i, j]))) <= held
        step = len(i) if whole else held // 2
        for s in range(0, len(i), step):
            a, b = i[s : s + step], j[s : s + step]
            u, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
            x = rows.take(u)
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            pair_dots(x, x, inv[: len(a)], inv[len(a) :], out[s : s + step])
    except InputError as e:
        logger.warning("%s: near-duplicates are not confirmed by float cosine", e)
        return None
    finally:
        rows.close()
    return out


@njit(cache=True)
def _leaders(indptr, indices, order, n):
    """Group id per node (-1: in no group) and the leader of each group: nodes in ``order``
    that are not grouped yet lead their ungrouped neighbours."""
    group = np.full(n, -1, np.int64)
    leaders = np.empty(len(order), np.int64)
    g = 0
    for node in order:
        if group[node] >= 0:
            continue
        taken = 0
        for t in range(indptr[node], indptr[node + 1]):
            if group[indices[t]] < 0 and indices[t] != node:
                group[indices[t]] = g
                taken += 1
        if taken:
            group[node] = g
            leaders[g] = node
            g += 1
    return group, leaders[:g]


def leader_groups(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Groups of rows from confirmed pairs (see the module docstring), each with its leader first."""
    if len(i) == 0:
        return []
    a, b = np.concatenate([i, j]), np.concatenate([j, i])
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=n))]).astype(np.int64)
    degree = np.diff(indptr)
    involved = np.flatnonzero(degree)
    by = involved[np.lexsort((involved, -degree[involved]))]  # most near-duplicates first, ties by id
    group, leaders = _leaders(indptr, b, by, n)
    members = np.flatnonzero(group >= 0)
    members = members[np.argsort(group[members], kind="stable")]  # by group, rows ascending within
    bounds = np.searchsorted(group[members], np.arange(len(leaders) + 1))
    out = []
    for g, lead in enumerate(leaders):
        rows = members[bounds[g] : bounds[g + 1]]
        out.append(np.concatenate([[lead], rows[rows != lead]]))
    return out


def find_duplicates(snap, config: DedupConfig = DedupConfig(), *, progress: bool = False) -> Duplicates:
    """Near-duplicate groups of a snapshot (see the module docstring).

    Raises:
        InputError: bad thresholds, or more candidate pairs than ``config.max_pairs``.
    """
    import time

    r = config.radius_for(snap.bits)
    t0 = time.perf_counter()
    i, j, d = candidate_pairs(snap, r, progress=progress, max_pairs=config.max_pairs)
    t1 = time.perf_counter()
    cos = cosines(snap, i, j) if config.min_cosine is not None and len(i) else None
    pix = np.full(len(i), np.nan, np.float32)
    if cos is not None:
        ok = cos >= config.min_cosine
        low = np.flatnonzero(~ok)
        if config.min_pixels is not None and len(low):
            pix[low] = pixel_scores(snap, i[low], j[low], progress=progress)
            ok[low] = pix[low] >= config.min_pixels  # NaN (no image) confirms nothing
        i, j, d, cos, pix = i[ok], j[ok], d[ok], cos[ok], pix[ok]
    else:
        cos = np.full(len(i), np.nan, np.float32)
    t2 = time.perf_counter()
    groups = leader_groups(snap.ntotal, i, j)
    seconds = {"pairs": round(t1 - t0, 3), "confirm": round(t2 - t1, 3), "group": round(time.perf_counter() - t2, 3)}
    return Duplicates(groups, (i, j, d, cos, pix), r, config.min_cosine, config.min_pixels, len(d), seconds)


def query_duplicates(
    snap,
    logits: np.ndarray,
    x: np.ndarray | None,
    config: DedupConfig = DedupConfig(),
    thumbs: np.ndarray | None = None,
):
    """For each query (its logits, float embedding and, when given, its thumbnail from
    :func:`hashindex.dedup.pixels.thumbnail`), the rows within the radius that its cosine or its
    pixels confirm (as :func:`find_duplicates` does; the pixels of at most :data:`PIXEL_CHECKS`
    candidates per query, those of highest cosine): ``(query, row, hamming, cosine, pixels)``."""
    r = config.radius_for(snap.bits)
    q_codes = np.packbits(logits > 0, axis=1)
    q, rows, d = within(tables_for(snap, r), q_codes, r)
    cos = np.full(len(q), np.nan, np.float32)
    pix = np.full(len(q), np.nan, np.float32)
    if x is not None and len(q) and config.min_cosine is not None:
        fr = snap.float_rows()
        try:
            b = fr.take(rows)
            a = x[q]
            cos = ((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)).astype(
                np.float32
            )
        except InputError as e:
            logger.warning("%s: matches are not confirmed by float cosine", e)
            return q, rows, d, cos, pix
        finally:
            fr.close()
        ok = cos >= config.min_cosine
        low = np.flatnonzero(~ok)
        if config.min_pixels is not None and thumbs is not None and len(low):
            # At most PIXEL_CHECKS images read per query, the highest cosines first: what one
            # request (a wide radius over a large collection) may cost stays bounded.
            order = np.lexsort((-cos[low], q[low]))
            by_query = q[low][order]
            rank = np.arange(len(order)) - np.searchsorted(by_query, by_query)
            low = np.sort(low[order][rank < PIXEL_CHECKS])
            pix[low] = against_rows(snap, thumbs, q[low], rows[low])
            ok[low] = pix[low] >= config.min_pixels  # NaN (no image) confirms nothing
        q, rows, d, cos, pix = q[ok], rows[ok], d[ok], cos[ok], pix[ok]
    return q, rows, d, cos, pix
