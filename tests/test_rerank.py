"""Re-ranking against brute-force references."""

import h5py
import numpy as np
import pytest

from hashindex import build_index
from hashindex.core.config import FitConfig, IndexConfig
from hashindex.index.load import load_index
from hashindex.probe.fit import fit_probe
from hashindex.search.asymmetric import rerank_asymmetric
from hashindex.search.exact import cosine_knn
from hashindex.search.rerank import FloatRows


@pytest.fixture
def index(tmp_path, clusters):
    """A flat index's snapshot (searches answer with rows; a fresh build's ids are its rows)."""
    fit_probe(clusters, FitConfig(bits=16, epochs=1), progress=False).save(tmp_path / "p")
    snap = build_index(clusters, tmp_path / "p", tmp_path / "idx", kind="flat").snapshot
    assert snap.kind == "flat" and snap.is_base()
    return snap


def ranked(snap, xq, k, rerank=None, asymmetric=False):
    """``(D, ids, S)``: the snapshot's ranking with rows turned into ids."""
    d, rows, s = snap.search(xq, k, rerank, asymmetric)
    return d, snap.ids[rows], s


def test_float_rows_memmap_and_chunked_agree(tmp_path, rng):
    x = rng.standard_normal((100, 8)).astype(np.float32)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("embeddings", data=x)
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.create_dataset("embeddings", data=x, chunks=(16, 8))
    ids = np.array([[5, 3, 99], [0, 5, 5]])
    a, b = FloatRows(tmp_path / "c.h5"), FloatRows(tmp_path / "k.h5")
    assert a._mm is not None and b._mm is None
    np.testing.assert_array_equal(a.take(ids), x[ids])
    np.testing.assert_array_equal(b.take(ids), x[ids])


def test_float_rerank_of_everything_is_exact_cosine(index, clusters):
    xq = clusters.embeddings(slice(0, 10))
    _, i, s = ranked(index, xq, 20, rerank=clusters.n)  # R·k covers the whole database
    rs, ri = cosine_knn(xq, clusters.embeddings(), 20)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-5)


def test_float_rerank_keeps_hamming_candidates(index, clusters):
    from hashindex.search.ranking import hamming_search

    xq = clusters.embeddings(slice(0, 5))
    _, cand = hamming_search(index.index, index.probe.encode(xq), 30)
    _, i, s = ranked(index, xq, 10, rerank=3)
    for row in range(5):
        assert set(i[row]) <= set(cand[row])
        assert list(s[row]) == sorted(s[row], reverse=True)


def test_asymmetric_distance_by_formula(index, clusters, rng):
    xq = clusters.embeddings(slice(0, 4))
    logits = index.probe.logits(xq)
    db = index.base.codes()
    np.testing.assert_array_equal(db, index.codes)
    cand = np.stack([rng.permutation(clusters.n)[:50] for _ in range(4)])
    d, i = rerank_asymmetric(logits, cand, db, 7)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    for row in range(4):
        bits = np.unpackbits(db[cand[row]], axis=1)
        dist = np.abs(p[row] - bits).sum(1)
        order = sorted(range(50), key=lambda j: (round(dist[j], 4), cand[row, j]))[:7]
        np.testing.assert_array_equal(i[row], cand[row, order])
        np.testing.assert_allclose(d[row], dist[order], rtol=1e-5)


def test_lookup_index_folder(tmp_path, clusters, index):
    lk = build_index(clusters, tmp_path / "p", tmp_path / "lk", IndexConfig("lookup")).snapshot
    assert load_index(tmp_path / "lk").kind == "lookup" and lk.kind == "lookup"
    assert lk.index.kind == "lookup" and lk.index.engine.tables.m == 1  # multi-index hashing, one table
    from hashindex.search.ranking import search_embeddings

    xq = clusters.embeddings(slice(0, 30))
    for a, b in zip(search_embeddings(lk.index, xq, 40), search_embeddings(index.index, xq, 40)):
        np.testing.assert_array_equal(a, b)


def test_bad_rerank_factor(index, clusters):
    from hashindex.core.errors import InputError

    with pytest.raises(InputError, match="rerank"):
        ranked(index, clusters.embeddings(slice(0, 1)), 5, rerank=0)
