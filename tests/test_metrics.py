"""Metrics on hand-computed cases."""

import numpy as np
import pytest

from hashindex.measure.metrics import average_precision, mean_average_precision, precision_at_k, relevance


def test_average_precision_by_hand():
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    # q0: (1/1 + 2/3) / 2; q1: (1/2) / 1; q2: no hit -> 0; q3: 1
    want = [(1 + 2 / 3) / 2, 0.5, 0.0, 1.0]
    np.testing.assert_allclose(average_precision(rel), want)
    assert mean_average_precision(rel) == pytest.approx(np.mean(want))
    assert precision_at_k(rel) == pytest.approx(7 / 16)


def test_empty_query_set():
    assert mean_average_precision(np.zeros((0, 5), bool)) == 0.0


def test_relevance_multi_label():
    q = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.uint8)
    db = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]], np.uint8)
    ids = np.array([[0, 1, 3], [1, 0, 2], [0, 3, 1]])
    rel = relevance(q, db, ids)
    np.testing.assert_array_equal(rel, [[1, 0, 1], [1, 1, 0], [0, 0, 0]])
