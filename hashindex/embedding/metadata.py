"""Item metadata from a sidecar file keyed by item name: CSV (a header with a ``name`` column),
JSON Lines (one object per line with a ``name``) or parquet (a ``name`` column). Every other
column is a field: numbers when every value present is a number, text otherwise. Items the
sidecar does not list get no value (NaN or ""), which no filter condition matches except ``!=``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError

NAME = "name"
MAX_FIELDS = 64


def _number(v) -> float | None:
    """v as a number, None when it is none, or raises ValueError when it is text."""
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return None
    if isinstance(v, bool):
        raise ValueError
    x = float(v)
    if math.isnan(x):
        return None
    return x


def columns_from_values(cols: dict[str, list], n: int) -> dict[str, np.ndarray]:
    """Typed columns: float64 (NaN for none) when every value is a number or none, else text.

    Raises:
        InputError: a column of another length than n, or too many fields.
    """
    if len(cols) > MAX_FIELDS:
        raise InputError(f"{len(cols)} metadata fields; at most {MAX_FIELDS}")
    out = {}
    for key, values in cols.items():
        if (
            key in ("label", "id", NAME)
            or not key
            or not key.replace("_", "").replace("-", "").replace(".", "").isalnum()
        ):
            raise InputError(f"metadata field {key!r}: use letters, digits, '_', '-' or '.', and not label, id or name")
        if len(values) != n:
            raise InputError(f"metadata field {key!r} has {len(values)} values for {n} items")
        try:
            nums = [_number(v) for v in values]
            out[key] = np.array([np.nan if v is None else v for v in nums], np.float64)
        except (TypeError, ValueError):
            out[key] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    return out


def read_sidecar(path: str | Path) -> dict[str, dict]:
    """``{item name: {field: value}}`` from a CSV, JSON Lines or parquet file.

    Raises:
        InputError: an unreadable file, no ``name`` column, a name listed twice.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"metadata file {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        elif suffix in (".jsonl", ".ndjson"):
            with open(p, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            raise InputError(f"metadata file {p}: use .csv, .jsonl or .parquet")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"metadata file {p} is unreadable: {type(e).__name__}: {e}"[:400]) from None
    out: dict[str, dict] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or NAME not in row:
            raise InputError(f"metadata file {p}: row {i + 1} has no {NAME!r} (every row names its item)")
        name = str(row[NAME])
        if name in out:
            raise InputError(f"metadata file {p}: item {name!r} is listed twice")
        out[name] = {str(k): v for k, v in row.items() if k != NAME}
    return out


def metadata_for(names: list[str], sidecar: dict[str, dict]) -> dict[str, np.ndarray]:
    """The sidecar's fields for these item names (names it does not list get no value)."""
    fields = sorted({k for row in sidecar.values() for k in row})
    cols = {f: [sidecar.get(n, {}).get(f) for n in names] for f in fields}
    return columns_from_values(cols, len(names))


def metadata_source(metadata):
    """A function of item names giving their metadata: from a sidecar file keyed by name, or
    from values given one per item."""
    if isinstance(metadata, (str, os.PathLike)):
        sidecar = read_sidecar(metadata)
        return lambda names: metadata_for(names, sidecar)
    return lambda names: metadata_columns(metadata, len(names))


def metadata_columns(metadata, count: int) -> dict:
    """Field -> values, from a mapping of columns or a list of per-item dicts."""
    if isinstance(metadata, dict):
        cols = {str(k): list(v) for k, v in metadata.items()}
    else:
        rows = list(metadata)
        cols = {str(k): [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r})}
    return columns_from_values(cols, count)
