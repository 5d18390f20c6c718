"""The resume folder ``OUT.partial/`` of an embeddings file being written.

``settings.json`` (what is being embedded) is written first; then every commit writes one shard
``shard-<start>-<end>.npz`` (plain ``.npy`` arrays, no pickle) holding the rows and failures of
items ``start..end-1``, durably (:func:`~hashindex.core.durable.write_durably`), so a shard that
has its final name is whole. The shards that form an unbroken chain from item 0 are the
progress; anything else (temporary files, a half-assembled file) is discarded on resume.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.durable import fsync_dir

logger = logging.getLogger(__name__)

RESUME_FORMAT = 1
SETTINGS = "settings.json"
ASSEMBLED = "assembled.h5"
ITEMS = "items.txt"  # the source's item keys when the run began (name, size, mtime per line)
SHARD_RE = re.compile(r"^shard-(\d{12})-(\d{12})\.npz$")


def partial_path(path: str | os.PathLike) -> Path:
    """The resume folder of an output file: ``OUT.partial``."""
    return Path(str(path) + ".partial")


@dataclass
class Shard:
    start: int
    end: int
    rows: int
    path: Path


def read_settings(work: Path) -> dict | None:
    try:
        doc = json.loads((work / SETTINGS).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def changed_item(work: Path, keys: list[str] | None) -> str:
    """Describe the first item whose key differs between the interrupted run and now."""
    hint = "delete the folder or re-run with --restart to start over"
    try:
        old = (work / ITEMS).read_bytes().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        old = None
    if old is None or keys is None:
        return f"its items differ; {hint}"
    for i, (a, b) in enumerate(zip(old, keys)):
        if a != b:
            return f"item {i} was {_show(a)} and is now {_show(b)}; {hint}"
    return f"it had {len(old)} items and has {len(keys)} now; {hint}"


def _show(key: str) -> str:
    name, *rest = key.split("\t")
    return repr(name) + (f" ({rest[0]} bytes, mtime {rest[1]})" if len(rest) == 2 else " (missing)" if rest else "")


def shard_rows(path: Path) -> int | None:
    """Rows of a shard from its small ``source_index`` member, or None when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["source_index"].shape[0])
    except Exception:
        return None


def scan_shards(work: Path, n: int) -> list[Shard]:
    """The readable shards that chain from item 0; every other shard file is deleted."""
    found: dict[int, list[tuple[int, Path]]] = {}
    for p in work.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(1)), []).append((int(m.group(2)), p))
    chain: list[Shard] = []
    pos = 0
    while pos in found:
        best = None
        for end, p in sorted(found.pop(pos), reverse=True):
            rows = shard_rows(p) if best is None and pos < end <= n else None
            if rows is not None:
                best = Shard(pos, end, rows, p)
            else:
                logger.warning("discarding progress file %s (unreadable, out of range or superseded)", p)
                p.unlink(missing_ok=True)
        if best is None:
            break
        chain.append(best)
        pos = best.end
    for rest in found.values():  # not part of the chain from item 0
        for _, p in rest:
            p.unlink(missing_ok=True)
    return chain


def shard_meta(shard: Shard) -> dict:
    try:
        with np.load(shard.path, allow_pickle=False) as z:
            return json.loads(str(z["meta"][()]))
    except Exception:
        return {}


def check_shard(data: dict, s: Shard, w) -> None:
    m = len(data["source_index"])
    if [int(v) for v in data["range"]] != [s.start, s.end] or m != s.rows:
        raise ValueError(f"holds items {data['range'].tolist()} and {m} rows, its name says {s.start}..{s.end}")
    want = {"embeddings": (m, w.dim), "names": (m,)}
    if w.views:
        want["views"] = (m, w.views, w.dim)
    if w.label_dim:
        want["labels"] = (m, w.label_dim)
    for k, shape in want.items():
        if data[k].shape != shape:
            raise ValueError(f"{k} has shape {data[k].shape}, expected {shape}")


def remove_resume_folder(work: Path) -> None:
    """Delete a resume folder: shards first, the settings last, so an interrupted removal still
    leaves a folder that is recognised as ours."""
    if not work.is_dir():
        return
    for p in work.iterdir():
        if p.name != SETTINGS:
            p.unlink(missing_ok=True)
    (work / SETTINGS).unlink(missing_ok=True)
    work.rmdir()
    fsync_dir(work.parent)
