"""Near-duplicate groups as records (ids, names, which item stays, distances to it) and as
files: JSON, CSV, and the list of ids to remove (``hashindex remove --ids-from``)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from hashindex.core.codes import hamming
from hashindex.core.durable import write_durably
from hashindex.dedup.find import cosines


def _size(snap, p: int) -> int:
    path = snap.file_of(p)
    return path.stat().st_size if path is not None else -1


def keep_row(snap, rows: np.ndarray, rule: str) -> int:
    """The row of a group that stays: ``first``/``last`` by id, ``largest``/``smallest`` by file
    size (ties, and items without a file, by id)."""
    rows = np.sort(rows)
    if rule == "first":
        return int(rows[0])
    if rule == "last":
        return int(rows[-1])
    sizes = np.array([_size(snap, int(p)) for p in rows])
    best = sizes.max() if rule == "largest" else np.where(sizes >= 0, sizes, np.iinfo(np.int64).max).min()
    return int(rows[np.flatnonzero(sizes == best)[0]])


def group_records(snap, dups, keep: str) -> list[dict]:
    """One record per group: ``group``, ``keep`` (id), ``remove`` (ids), and ``items`` with id,
    name, label, whether it stays, and its Hamming distance, cosine (None without float
    embeddings) and pixel agreement (None where the pair was not confirmed by its pixels) to the
    kept item."""
    i, j, _, cos, pix = dups.pairs
    cos_of = {(int(a), int(b)): float(c) for a, b, c in zip(i, j, cos)}
    pix_of = {(int(a), int(b)): float(p) for a, b, p in zip(i, j, pix) if p == p}
    kept = [keep_row(snap, rows, keep) for rows in dups.groups]
    # A kept item that is not its group's leader was not paired with every member: their cosine
    # to it is computed now (when the floats confirmed the pairs at all).
    missing = [
        (min(k, int(r)), max(k, int(r)))
        for k, rows in zip(kept, dups.groups)
        for r in rows
        if r != k and (min(k, int(r)), max(k, int(r))) not in cos_of
    ]
    if missing and len(cos) and not np.isnan(cos).all():
        a, b = (np.array(x, np.int64) for x in zip(*missing))
        extra = cosines(snap, a, b)
        if extra is not None:
            cos_of.update(zip(missing, extra.tolist()))
    out = []
    for g, (rows, k) in enumerate(zip(dups.groups, kept)):
        d = hamming(snap.codes[[k]], snap.codes[rows])[0]
        names = snap.name_list(rows)
        items = []
        for r, dist, name in zip(rows, d, names):
            pair = (min(k, int(r)), max(k, int(r)))
            c = 1.0 if r == k else cos_of.get(pair)
            px = 1.0 if r == k else pix_of.get(pair)
            items.append(
                {
                    "id": int(snap.ids[r]),
                    "name": name,
                    "label": snap.label_text(int(r)),
                    "keep": bool(r == k),
                    "hamming": int(dist),
                    "cosine": None if c is None or c != c else round(c, 6),
                    "pixels": None if px is None else round(px, 6),
                }
            )
        kid = int(snap.ids[k])
        out.append({"group": g, "keep": kid, "remove": [it["id"] for it in items if not it["keep"]], "items": items})
    return out


def match_records(snap, rows, d, cos, pix) -> list[dict]:
    """One record per indexed near-duplicate of a query: id, name, label, Hamming distance, cosine
    and pixel agreement (None where not computed)."""
    return [
        {
            "id": int(snap.ids[r]),
            "name": n,
            "label": snap.label_text(int(r)),
            "hamming": int(h),
            "cosine": None if c != c else round(float(c), 6),
            "pixels": None if p != p else round(float(p), 6),
        }
        for r, h, c, p, n in zip(rows, d, cos, pix, snap.name_list(rows))
    ]


def write_json(records: list[dict], path, meta: dict) -> None:
    doc = {**meta, "groups": records}
    write_durably(path, lambda fh: fh.write((json.dumps(doc, indent=1) + "\n").encode()))


def write_csv(records: list[dict], path) -> None:
    def fill(fh):
        import io

        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["group", "id", "name", "label", "keep", "hamming", "cosine", "pixels"])
        for rec in records:
            for it in rec["items"]:
                w.writerow(
                    [
                        rec["group"],
                        it["id"],
                        it["name"],
                        it["label"],
                        int(it["keep"]),
                        it["hamming"],
                        "" if it["cosine"] is None else it["cosine"],
                        "" if it["pixels"] is None else it["pixels"],
                    ]
                )
        fh.write(text.getvalue().encode())

    write_durably(path, fill)


def write_remove_list(records: list[dict], path) -> int:
    """The ids to remove (all but the kept item of each group), one per line; returns how many."""
    ids = [i for rec in records for i in rec["remove"]]
    write_durably(path, lambda fh: fh.write("".join(f"{i}{os.linesep}" for i in ids).encode()))
    return len(ids)


def write_duplicates(
    records: list[dict], *, json_path=None, csv_path=None, remove_path=None, meta: dict | None = None
) -> int:
    """Write near-duplicate groups (:meth:`hashindex.Index.duplicates`) to any of JSON, CSV and a
    list of ids to remove; returns how many items the groups would remove."""
    if json_path:
        write_json(records, json_path, meta or {})
    if csv_path:
        write_csv(records, csv_path)
    if remove_path:
        write_remove_list(records, remove_path)
    return sum(len(rec["remove"]) for rec in records)
