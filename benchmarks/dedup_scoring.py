"""Scoring of the near-duplicate benchmark (see ``dedup.py``): the truth's precision and recall of
pairs and of groups, sweeps over thresholds, and the reference methods' pairs (pHash, brute-force
Hamming, float cosine, pixel agreement)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dedup_collection import EDITS


class Truth:
    def __init__(self, orig: np.ndarray, edit: np.ndarray):
        self.orig, self.edit, self.n = orig, edit, len(orig)
        ks = orig[orig >= 0]
        _, counts = np.unique(ks, return_counts=True)
        self.total = int((counts * (counts - 1) // 2).sum())
        self.originals = len(counts)
        self.copy_pairs = int(((counts - 1) * (counts - 2) // 2).sum())
        # the row of each original and of each of its copies, aligned by original
        order = np.unique(ks)
        self.row_of = {}
        for e in ("original", *EDITS):
            rows = np.flatnonzero(edit == e)
            rows = rows[np.argsort(orig[rows])]
            assert np.array_equal(orig[rows], order), f"missing {e} copies"
            self.row_of[e] = rows

    def score_pairs(self, i: np.ndarray, j: np.ndarray, detail: bool = True) -> dict:
        same = (self.orig[i] == self.orig[j]) & (self.orig[i] >= 0)
        tp = int(same.sum())
        out = {
            "pairs": len(i),
            "true_pairs": tp,
            "precision": round(tp / len(i), 5) if len(i) else 1.0,
            "recall": round(tp / self.total, 5),
        }
        if detail:
            ei, ej = self.edit[i[same]], self.edit[j[same]]
            per = {}
            for e in EDITS:
                hit = ((ei == "original") & (ej == e)) | ((ej == "original") & (ei == e))
                per[e] = round(int(hit.sum()) / self.originals, 4)
            cc = (ei != "original") & (ej != "original")
            per["copy-copy"] = round(int(cc.sum()) / self.copy_pairs, 4)
            out["recall_by_edit"] = per
        return out

    def score_groups(self, groups: list[np.ndarray], detail: bool = True) -> dict:
        """Scores of the pairs the groups imply (two items in one group)."""
        gid = np.full(self.n, -1, np.int64)
        sizes = np.array([len(g) for g in groups], np.int64)
        if len(groups):
            gid[np.concatenate(groups)] = np.repeat(np.arange(len(groups)), sizes)
        pairs = int((sizes * (sizes - 1) // 2).sum())
        m = (gid >= 0) & (self.orig >= 0)
        key = gid[m] * (1 << 32) + self.orig[m]
        _, c = np.unique(key, return_counts=True)
        tp = int((c * (c - 1) // 2).sum())
        out = {
            "groups": len(groups),
            "pairs": pairs,
            "true_pairs": tp,
            "precision": round(tp / pairs, 5) if pairs else 1.0,
            "recall": round(tp / self.total, 5),
        }
        if detail:
            o = self.row_of["original"]
            per = {}
            for e in EDITS:
                r = self.row_of[e]
                per[e] = round(float(((gid[o] >= 0) & (gid[o] == gid[r])).mean()), 4)
            out["recall_by_edit"] = per
        return out


def sweep(truth: Truth, i, j, score, thresholds, *, higher: bool, n: int) -> list[dict]:
    """Pair and group scores at each threshold (pairs kept: score >= t when ``higher``, else <= t)."""
    from hashindex.dedup.find import leader_groups

    rows = []
    for t in thresholds:
        ok = score >= t if higher else score <= t
        a, b = i[ok], j[ok]
        rows.append(
            {
                "threshold": t,
                "pair": truth.score_pairs(a, b),
                "group": truth.score_groups(leader_groups(n, a, b)),
            }
        )
    return rows


def scored(truth: Truth, n: int, a, b, threshold, group_floor: float) -> dict:
    """Pair scores of a setting, and its groups' when the pairs' precision reaches ``group_floor``
    (grouping is the slow part of a sweep; settings far below the target precision skip it)."""
    from hashindex.dedup.find import leader_groups

    pair = truth.score_pairs(a, b)
    group = truth.score_groups(leader_groups(n, a, b)) if pair["precision"] >= group_floor else None
    return {"threshold": threshold, "pair": pair, "group": group}


def best(rows: list[dict], min_precision: float, level: str, key=lambda r: r["threshold"]) -> dict | None:
    ok = [r for r in rows if r[level] is not None and r[level]["precision"] >= min_precision]
    if not ok:
        return None
    r = max(ok, key=lambda r: (r[level]["recall"], r[level]["precision"]))
    return {"setting": key(r), **r[level]}


def phash_codes(folder: Path, names: list[str]) -> np.ndarray:
    import imagehash
    from PIL import Image

    out = np.empty((len(names), 8), np.uint8)
    for r, n in enumerate(names):
        with Image.open(folder / n) as im:
            h = imagehash.phash(im, hash_size=8)
        out[r] = np.packbits(h.hash.reshape(-1))
    return out


def brute_pairs(codes: np.ndarray, radius: int, chunk: int = 2048):
    """Every pair i < j within ``radius``: NumPy XOR and popcount over all pairs (the reference)."""
    nb = codes.shape[1]
    word = next(t for t in (np.uint64, np.uint32, np.uint16, np.uint8) if nb % np.dtype(t).itemsize == 0)
    w = np.ascontiguousarray(codes).view(word)
    parts = []
    for s in range(0, len(codes), chunk):
        a = w[s : s + chunk]
        d = np.bitwise_count(a[:, None, :] ^ w[None, :, :]).sum(-1)
        ii, jj = np.nonzero(d <= radius)
        ii += s
        keep = jj > ii
        parts.append((ii[keep], jj[keep], d[ii[keep] - s, jj[keep]]))
    i, j, d = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order].astype(np.int32)


def pixel_vectors(folder: Path, names: list[str]):
    """Unit thumbnail vectors (as they are, mirrored) of the files, read as the library reads them."""
    from hashindex.dedup.pixels import DRAFT, thumbnail, unit_vectors
    from hashindex.embedding.decode import decode_image

    return unit_vectors(np.stack([thumbnail(decode_image(str(folder / n), DRAFT)) for n in names]))


def pixel_pairs(vectors, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from hashindex.dedup.pixels import agreement

    plain, mirror = vectors
    return agreement(plain, plain, mirror, i, j)


def either(cos, pix, c, p):
    """Pairs confirmed by cosine >= c or pixels >= p (p None: cosine only; c "none": every pair)."""
    if c == "none":
        return np.ones(len(cos), bool)
    ok = cos >= c
    return ok if p is None else ok | (pix >= p)


def cosine_pairs(x: np.ndarray, low: float, chunk: int = 1024):
    parts = []
    for s in range(0, len(x), chunk):
        c = x[s : s + chunk] @ x.T
        ii, jj = np.nonzero(c >= low)
        ii += s
        keep = jj > ii
        parts.append((ii[keep], jj[keep], c[ii[keep] - s, jj[keep]]))
    return tuple(np.concatenate(p) for p in zip(*parts))
