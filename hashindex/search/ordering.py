"""Result order, the same everywhere: by distance (or score), equal values by ascending id."""

from __future__ import annotations

import numpy as np


def sort_results(d: np.ndarray, i: np.ndarray, descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Order every row by distance (or score, when ``descending``), ties by ascending id."""
    key = -d if descending else d
    order = np.lexsort((i, key), axis=1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
