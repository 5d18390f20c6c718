"""The value a search returns: per query, the ranked hits' ids, Hamming distances, names, labels
(and re-ranking scores)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hits:
    """The ranked results of one query.

    Attributes:
        query: what was asked (a path, ``image 0``, ``embedding 0``, ``id 5``).
        ids: int64 item ids, best first (equal distances ordered by id).
        distances: int32 Hamming distances.
        names: the items' names.
        labels: the items' labels as text ("" when unlabelled).
        scores: re-ranking scores (cosine similarity, or asymmetric distance), or None.
    """

    query: str
    ids: np.ndarray
    distances: np.ndarray
    names: list[str]
    labels: list[str]
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def to_dicts(self) -> list[dict]:
        """One ``{"rank", "id", "name", "label", "distance"[, "score"]}`` per hit."""
        out = []
        for r in range(len(self.ids)):
            hit = {
                "rank": r + 1,
                "id": int(self.ids[r]),
                "name": self.names[r],
                "label": self.labels[r],
                "distance": int(self.distances[r]),
            }
            if self.scores is not None:
                hit["score"] = round(float(self.scores[r]), 6)
            out.append(hit)
        return out


class SearchResults(Sequence[Hits]):
    """The hits of every query, in the order the queries were given (a sequence of :class:`Hits`)."""

    def __init__(self, hits: list[Hits]):
        self._hits = list(hits)

    def __len__(self) -> int:
        return len(self._hits)

    def __getitem__(self, i):
        return self._hits[i]

    def __iter__(self) -> Iterator[Hits]:
        return iter(self._hits)

    def __repr__(self) -> str:
        k = {len(h) for h in self._hits}
        return f"SearchResults({len(self)} queries, {'k=' + str(k.pop()) if len(k) == 1 else 'ragged'})"

    @property
    def ids(self) -> np.ndarray:
        """``(nq, k)`` ids (queries with fewer hits, from a filter, padded with -1)."""
        return _stack([h.ids for h in self._hits], -1, np.int64)

    @property
    def distances(self) -> np.ndarray:
        """``(nq, k)`` Hamming distances (padded with -1 like :attr:`ids`)."""
        return _stack([h.distances for h in self._hits], -1, np.int32)

    def to_dicts(self) -> list[dict]:
        """``[{"query": ..., "results": [hit dicts]}]``: what ``query --json`` prints."""
        return [{"query": h.query, "results": h.to_dicts()} for h in self._hits]


def _stack(rows: list[np.ndarray], fill, dtype) -> np.ndarray:
    k = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), k), fill, dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
