"""Filters: which items a search may return.

A filter is a conjunction of conditions on an item's fields: ``label`` (an item matches a class
when it carries that label) and the metadata fields of the index (strings or numbers). Forms:

- text (``query --where``): ``label=Trouser``, ``label=Trouser,Dress`` (any of), ``label!=Bag``,
  ``year>=2010``, ``price<9.5``, ``year=2010..2015`` (inclusive range);
- a mapping (the HTTP API, ``Index.search(where=...)``): ``{"label": "Trouser"}``,
  ``{"label": ["Trouser", "Dress"]}``, ``{"label": {"!=": "Bag"}}``,
  ``{"year": {">=": 2010, "<": 2016}}``.

Conditions resolve to :class:`Allowed` rows through per-field indexes built once per snapshot
(value -> sorted rows; numbers sorted), so a selective filter costs little more than its rows.
Searches apply the rows when candidates are verified (:mod:`hashindex.search.engines`): the k
results are the k nearest items that satisfy the filter.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from hashindex.core.errors import InputError

SMALL_ROWS = 65536  # a filter this selective is searched by a scan of its rows
RECENT, RECENT_BYTES = 16, 256 << 20  # filters whose rows and masks a snapshot keeps
_TEXT = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|>=|<=|=|>|<)\s*(.*?)\s*$")
_OPS = {"==": "in", "=": "in", "!=": "not in", ">": ">", "<": "<", ">=": ">=", "<=": "<="}


class Allowed:
    """The rows a search may return: sorted row positions, or a boolean mask over the rows."""

    def __init__(self, rows: np.ndarray | None = None, mask: np.ndarray | None = None):
        self._rows, self._mask, self._count = rows, mask, None

    @classmethod
    def everything_but(cls, rows: np.ndarray, n: int) -> Allowed:
        mask = np.ones(n, bool)
        mask[rows] = False
        return cls(mask=mask)

    def rows(self, n: int) -> np.ndarray:
        if self._rows is None:
            self._rows = np.flatnonzero(self._mask[:n])
        return self._rows

    def mask(self, n: int) -> np.ndarray:
        if self._mask is None:  # made whole before it is published: searches share it
            mask = np.zeros(n, bool)
            mask[self._rows] = True
            self._mask = mask
        return self._mask

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._rows, self._mask) if a is not None)

    def count(self, n: int) -> int:
        if self._count is None:
            self._count = len(self._rows) if self._rows is not None else int(np.count_nonzero(self._mask[:n]))
        return self._count

    def is_small(self, n: int) -> bool:
        """Selective enough that a scan of its rows beats any index."""
        return self.count(n) <= max(SMALL_ROWS, n // 8)

    def __and__(self, other: Allowed) -> Allowed:
        if self._rows is not None and other._rows is not None:
            return Allowed(np.intersect1d(self._rows, other._rows, assume_unique=True))
        if self._rows is not None:
            return Allowed(self._rows[other._mask[self._rows]])
        if other._rows is not None:
            return Allowed(other._rows[self._mask[other._rows]])
        return Allowed(mask=self._mask & other._mask)


@dataclass(frozen=True)
class Condition:
    """One condition: ``field`` ``op`` ``values`` with op ``in``, ``not in``, ``<``, ``<=``, ``>``, ``>=``."""

    field: str
    op: str
    values: tuple


def _value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def parse_where(spec) -> tuple[Condition, ...]:
    """Conditions from a text form, a list of them, or a mapping (see the module docstring).

    Raises:
        InputError: a malformed condition.
    """
    if spec is None:
        return ()
    if isinstance(spec, Condition):
        return (spec,)
    if isinstance(spec, str):
        m = _TEXT.match(spec)
        if not m or not m.group(3):
            raise InputError(f"a filter is FIELD=VALUE, FIELD!=VALUE, FIELD>=NUMBER or FIELD=LOW..HIGH, got {spec!r}")
        field, op, raw = m.group(1), _OPS[m.group(2)], m.group(3)
        if op == "in" and ".." in raw and raw.count("..") == 1:
            low, high = raw.split("..")
            return (Condition(field, ">=", (_number(field, low),)), Condition(field, "<=", (_number(field, high),)))
        if op in ("in", "not in"):
            return (Condition(field, op, tuple(_value(v.strip()) for v in raw.split(","))),)
        return (Condition(field, op, (_number(field, raw),)),)
    if isinstance(spec, dict):
        out = []
        for field, want in spec.items():
            if isinstance(want, dict):
                for op, v in want.items():
                    if op not in _OPS and op not in ("in", "not in"):
                        raise InputError(
                            f"unknown filter operator {op!r} for {field!r}: use ==, !=, in, not in, <, <=, >, >="
                        )
                    op = _OPS.get(op, op)
                    vals = tuple(v) if isinstance(v, (list, tuple)) else (v,)
                    out.append(Condition(str(field), op, vals if op in ("in", "not in") else (_number(field, v),)))
            else:
                out.append(Condition(str(field), "in", tuple(want) if isinstance(want, (list, tuple)) else (want,)))
        return tuple(out)
    if isinstance(spec, (list, tuple)):
        return tuple(c for s in spec for c in parse_where(s))
    raise InputError(f"a filter is a mapping or FIELD=VALUE text, got {type(spec).__name__}")


def _number(field: str, v) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
    except (TypeError, ValueError):
        raise InputError(f"filter {field!r}: {v!r} is not a number") from None
    if x != x:
        raise InputError(f"filter {field!r}: NaN is not a bound")
    return x


class Columns:
    """The filterable fields of a snapshot's rows, indexed on first use.

    Args:
        n: rows.
        labels: ``(n, C)`` multi-hot, or None.
        label_names: C class names (None: the column numbers as text).
        meta: metadata field -> ``(n,)`` array (float64 with NaN for none, or object strings).
    """

    def __init__(self, n: int, labels=None, label_names=None, meta: dict | None = None):
        self.n, self.labels, self.meta = n, labels, dict(meta or {})
        self.label_names = list(label_names) if label_names else None
        self._eq: dict[str, dict] = {}
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Recent filters' rows (and the masks their searches make), so a filter asked again
        # costs nothing: a broad one's mask is n bytes, worth about 1 ms per search at 1M rows.
        self._recent: dict[tuple, Allowed] = {}
        self._lock = threading.Lock()  # searches of one snapshot run on several threads

    def resolve(self, conditions: tuple[Condition, ...]) -> Allowed:
        """The rows allowed by all the conditions, kept (with the mask a search makes of them)
        among the :data:`RECENT` latest filters, :data:`RECENT_BYTES` in all."""
        with self._lock:
            hit = self._recent.pop(conditions, None)
        if hit is None:
            for cond in conditions:
                a = self.allowed(cond)
                hit = a if hit is None else hit & a
        with self._lock:
            self._recent[conditions] = hit  # the most recent last
            while len(self._recent) > 1 and (
                len(self._recent) > RECENT or sum(a.nbytes() for a in self._recent.values()) > RECENT_BYTES
            ):
                self._recent.pop(next(iter(self._recent)))
        return hit

    def fields(self) -> list[str]:
        return (["label"] if self.labels is not None else []) + sorted(self.meta)

    def _equal_index(self, field: str) -> dict:
        if field not in self._eq:
            if field == "label":
                names = self.label_names or [str(c) for c in range(self.labels.shape[1])]
                self._eq[field] = {_key(name): np.flatnonzero(self.labels[:, c]) for c, name in enumerate(names)}
            else:
                col = self.meta[field]
                keys = col.astype(str) if col.dtype.kind in "OUS" else col
                order = np.argsort(keys, kind="stable")
                uniq, starts = np.unique(keys[order], return_index=True)
                bounds = np.append(starts, len(order))
                self._eq[field] = {_key(u): np.sort(order[a:b]) for u, a, b in zip(uniq, bounds[:-1], bounds[1:])}
        return self._eq[field]

    def _numeric(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        if field not in self._sorted:
            col = self.meta[field]
            if col.dtype.kind not in "fiu":
                raise InputError(f"filter {field!r}: the field holds text, not numbers: use = or !=")
            order = np.argsort(col, kind="stable")
            vals = col[order]
            keep = ~np.isnan(vals)
            self._sorted[field] = (vals[keep], order[keep])
        return self._sorted[field]

    def allowed(self, cond: Condition) -> Allowed:
        """The rows that satisfy one condition.

        Raises:
            InputError: an unknown field, or an unknown label.
        """
        if cond.field != "label" and cond.field not in self.meta or cond.field == "label" and self.labels is None:
            have = ", ".join(self.fields()) or "none (the index has no labels or metadata)"
            raise InputError(f"cannot filter on {cond.field!r}: the index's fields are {have}")
        if cond.op in ("in", "not in"):
            index = self._equal_index(cond.field)
            parts = []
            for v in cond.values:
                key = _key(v)
                if cond.field == "label" and key not in index:
                    raise InputError(f"no label {v!r} in the index (labels: {', '.join(list(index)[:20])})")
                parts.append(index.get(key, np.zeros(0, np.int64)))
            rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            return Allowed(rows) if cond.op == "in" else Allowed.everything_but(rows, self.n)
        vals, order = self._numeric(cond.field)
        x = cond.values[0]
        side = "left" if cond.op in (">=", "<") else "right"
        cut = np.searchsorted(vals, x, side=side)
        rows = order[cut:] if cond.op in (">", ">=") else order[:cut]
        return Allowed(np.sort(rows))


def _key(v):
    """Values compare as text or as numbers: ``2010`` and ``2010.0`` are one key."""
    if isinstance(v, (np.floating, float, int, np.integer)) and not isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def resolve(conditions: tuple[Condition, ...], columns: Columns, rows: np.ndarray | None = None) -> Allowed | None:
    """The rows allowed by all conditions and, when given, among ``rows`` (sorted); None: no filter."""
    out = columns.resolve(conditions) if conditions else None
    if rows is not None:
        out = Allowed(rows) if out is None else Allowed(rows) & out
    return out
