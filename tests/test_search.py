"""faiss Hamming search against a NumPy popcount reference, ties by id, never −1."""

import numpy as np
import pytest

from hashindex.core.codes import hamming
from hashindex.core.config import IndexConfig
from hashindex.core.errors import InputError
from hashindex.search.engines import CodeIndex
from hashindex.search.exact import cosine_knn
from hashindex.search.ranking import hamming_search


def reference_topk(xq, xb, k):
    """Exact top-k by (distance, id) from a popcount table."""
    d = hamming(xq, xb)
    order = np.lexsort((np.broadcast_to(np.arange(xb.shape[0]), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


def _index(codes, config=IndexConfig("flat")):
    return CodeIndex.from_codes(codes, config)


def _codes_with_ties(rng, n, nbytes):
    xb = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    xb[n // 4 : n // 4 + n // 10] = xb[0]  # a block of exact duplicates: many equal distances
    return xb


@pytest.mark.parametrize("bits", [16, 32, 64, 128])
@pytest.mark.parametrize("nq", [1, 37])
def test_flat_equals_popcount_reference_with_ties_by_id(rng, bits, nq):
    xb = _codes_with_ties(rng, 5000, bits // 8)
    xq = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    xq[0] = xb[0]
    d, i = hamming_search(_index(xb), xq, 100)
    rd, ri = reference_topk(xq, xb, 100)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)
    assert d.dtype == np.int32 and i.dtype == np.int64


def test_k_larger_than_ntotal_returns_all(rng):
    xb = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    d, i = hamming_search(_index(xb), xb[:3], 50)
    assert i.shape == (3, 10) and (i >= 0).all()
    np.testing.assert_array_equal(np.sort(i, axis=1), np.tile(np.arange(10), (3, 1)))
    rd, ri = reference_topk(xb[:3], xb, 10)
    np.testing.assert_array_equal(i, ri)


def test_ivf_never_returns_placeholder_and_is_exact_when_probing_all(rng):
    xb = rng.integers(0, 256, (4000, 8), dtype=np.uint8)
    xq = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    idx = _index(xb, IndexConfig("ivf", nlist=64, nprobe=1))
    d, i = hamming_search(idx, xq, 500)  # one list of ~60 codes cannot fill 500
    assert (i >= 0).all() and i.shape == (20, 500)
    rd, _ = reference_topk(xq, xb, 500)
    np.testing.assert_array_equal(d, rd)  # the short rows were re-searched over all lists
    assert idx.kind == "ivf" and idx.engine.fi.nprobe == 1
    # Probing every list gives the exact distances; each returned id carries its true distance,
    # and every row is ordered by (distance, id). Which of several codes tied at the k-th
    # distance IVF keeps is faiss's choice.
    d, i = hamming_search(idx, xq, 10, nprobe=64)
    rd, _ = reference_topk(xq, xb, 10)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(d, np.take_along_axis(hamming(xq, xb), i, 1))
    assert all(list(zip(r_d, r_i)) == sorted(zip(r_d, r_i)) for r_d, r_i in zip(d, i))
    assert idx.engine.fi.nprobe == 1  # nprobe given per search leaves the index's own setting


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_bad_k(rng, k):
    xb = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    with pytest.raises(InputError, match="k must be"):
        hamming_search(_index(xb), xb[:1], k)


def test_bad_query_codes(rng):
    idx = _index(rng.integers(0, 256, (10, 4), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8"):
        hamming_search(idx, np.zeros((1, 4), np.int32), 1)
    with pytest.raises(InputError, match="2-D"):
        hamming_search(idx, np.zeros(4, np.uint8), 1)
    with pytest.raises(InputError, match="bits"):
        hamming_search(idx, np.zeros((1, 8), np.uint8), 1)


def test_cosine_knn_against_brute_force(rng):
    xb = rng.standard_normal((300, 16)).astype(np.float32)
    xb[10] = xb[3] * 2  # same direction as 3: equal cosine, tie broken by id
    xq = np.stack([xb[3], rng.standard_normal(16)]).astype(np.float32)
    s, i = cosine_knn(xq, xb, 5)
    nb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    sims = (xq / np.linalg.norm(xq, axis=1, keepdims=True)) @ nb.T
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(i[1], ref[1])
    assert list(i[0][:2]) == [3, 10]
    np.testing.assert_allclose(s, np.take_along_axis(sims, i, 1), rtol=1e-5)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("k", [1, 50, 3000])
def test_lookup_equals_popcount_reference(rng, bits, k):
    xb = _codes_with_ties(rng, 2000, bits // 8)
    xq = rng.integers(0, 256, (25, bits // 8), dtype=np.uint8)
    xq[0] = xb[0]
    idx = _index(xb, IndexConfig("lookup"))
    assert idx.kind == "lookup" and idx.engine.tables.m == 1  # multi-index hashing with one table
    d, i = hamming_search(idx, xq, k)
    rd, ri = reference_topk(xq, xb, min(k, 2000))
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)
    assert d.dtype == np.int32 and i.dtype == np.int64


def test_lookup_refuses_long_codes(rng):
    with pytest.raises(InputError, match="at most 16 bits"):
        _index(rng.integers(0, 256, (10, 4), dtype=np.uint8), IndexConfig("lookup"))
