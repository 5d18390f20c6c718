"""Property-based tests (hypothesis) of the search API on bad inputs: wrong dtypes and widths, 1-D
and 3-D queries, non-contiguous arrays, NaN/inf, k <= 0, k > ntotal, an empty index. Every call
either raises a ValueError (InputError) or returns a well-formed result: never a crash, never an
id -1."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_embeddings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hashindex import build_index
from hashindex.core.codes import hamming
from hashindex.core.config import FitConfig, IndexConfig
from hashindex.core.errors import InputError
from hashindex.core.validate import check_k
from hashindex.probe.fit import fit_probe
from hashindex.search.engines import CodeIndex
from hashindex.search.exact import cosine_knn
from hashindex.search.ranking import hamming_search, search_embeddings

N, DIM, BITS = 120, 16, 16
KINDS = ["flat", "ivf", "lookup", "mih"]
# Huge but finite values overflow inside the baselines' L2 normalisation (a warning, not an error).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """flat, ivf (1 of 4 lists probed: often short), lookup and mih index folders over the same
    16-bit codes, each searched through its loaded engine (a CodeIndex)."""
    d = tmp_path_factory.mktemp("props")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x[N // 2 : N // 2 + 20] = x[0]  # duplicates: many equal distances
    emb = write_embeddings(d / "e.h5", x)
    fit_probe(emb, FitConfig(method="itq", bits=BITS), progress=False).save(d / "probe")
    out = {}
    for cfg in (IndexConfig("flat"), IndexConfig("ivf", nlist=4, nprobe=1), IndexConfig("lookup"), IndexConfig("mih")):
        ix = build_index(emb, d / "probe", d / cfg.kind, cfg)
        assert ix.kind == cfg.kind
        out[cfg.kind] = ix.snapshot.index
    db_codes = out["flat"].probe.encode(x)
    np.testing.assert_array_equal(out["flat"].codes, db_codes)
    return out, x, db_codes


K = st.one_of(
    st.integers(-3, 3 * N),
    st.integers(10**6, 10**18),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, False, "3", b"3", 2.0, np.int64(5), np.float32(7.0), np.uint8(0), [3], 1j]),
)


def _valid_k(k) -> bool:
    try:
        check_k(k)
        return True
    except InputError:
        return False


def _check_result(d, i, codes, db_codes, k):
    kk = min(int(k), len(db_codes))
    assert d.shape == i.shape == (len(codes), kk) and d.dtype == np.int32 and i.dtype == np.int64
    assert (i >= 0).all() and (i < len(db_codes)).all()  # never the placeholder -1
    for row_d, row_i in zip(d, i):
        assert len(set(row_i.tolist())) == kk
        assert list(zip(row_d, row_i)) == sorted(zip(row_d, row_i))  # by distance, then id
    if len(codes):
        np.testing.assert_array_equal(d, np.take_along_axis(hamming(codes, db_codes), i, 1))


@st.composite
def code_arrays(draw):
    """Mostly well-formed (n, 2) uint8 codes, some of them non-contiguous views; otherwise any
    dtype and shape."""
    if draw(st.booleans()):
        n = draw(st.integers(0, 6))
        base = draw(hnp.arrays(np.uint8, (n, 4)))
        layout = draw(st.sampled_from(["c", "strided", "fortran", "reversed"]))
        if layout == "strided":
            return base[:, ::2]
        if layout == "fortran":
            return np.asfortranarray(base[:, :2])
        if layout == "reversed":
            return base[::-1, 1:3]
        return np.ascontiguousarray(base[:, :2])
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.bool_, np.uint16]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return draw(hnp.arrays(dtype, shape))


@SETTINGS
@given(codes=code_arrays(), k=K, kind=st.sampled_from(KINDS))
def test_hamming_search_validates_or_answers_exactly(indexes, codes, k, kind):
    idx, _, db_codes = indexes[0][kind], indexes[1], indexes[2]
    well_formed = codes.dtype == np.uint8 and codes.ndim == 2 and codes.shape[1] == BITS // 8
    try:
        d, i = hamming_search(idx, codes, k)
    except ValueError as e:
        assert isinstance(e, InputError) and str(e)
        assert not (well_formed and _valid_k(k)), f"refused valid input: {e}"
        return
    assert well_formed and _valid_k(k)
    if kind == "ivf":  # approximate for full rows, but every id carries its true distance
        kk = min(int(k), N)
        assert d.shape == (len(codes), kk) and (i >= 0).all() and (i < N).all()
        if len(codes):
            np.testing.assert_array_equal(d, np.take_along_axis(hamming(codes, db_codes), i, 1))
    else:
        _check_result(d, i, codes, db_codes, k)
        ref_order = (
            np.lexsort((np.broadcast_to(np.arange(N), (len(codes), N)), hamming(codes, db_codes)), axis=1)[
                :, : min(int(k), N)
            ]
            if len(codes)
            else i
        )
        np.testing.assert_array_equal(i, ref_order)


FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def embedding_arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.complex64, np.bool_, np.uint8]))
    if draw(st.integers(0, 3)):
        shape = (draw(st.integers(0, 5)), draw(st.sampled_from([DIM, DIM, DIM, DIM - 1, DIM + 1, 2 * DIM])))
    else:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=DIM + 1))
    if np.dtype(dtype).kind == "f":
        width = 16 if dtype == np.float16 else 32
        if draw(st.booleans()):
            elems = st.floats(-1e3, 1e3, width=width)
        else:
            elems = st.floats(width=width, allow_nan=True, allow_infinity=True)
        a = draw(hnp.arrays(dtype, shape, elements=elems))
    else:
        a = draw(hnp.arrays(dtype, shape))
    if a.ndim == 2 and a.shape[1] >= 2 and draw(st.booleans()):
        a = np.asfortranarray(a) if draw(st.booleans()) else np.repeat(a, 2, axis=1)[:, ::2]  # non-contiguous
    return a


@SETTINGS
@given(x=embedding_arrays(), k=K, kind=st.sampled_from(KINDS))
def test_search_embeddings_validates_or_matches_a_clean_copy(indexes, x, k, kind):
    idx = indexes[0][kind]
    ok = (
        x.dtype.kind == "f"
        and x.ndim == 2
        and x.shape[1] == DIM
        and np.isfinite(x.astype(np.float64)).all()
        and np.isfinite(x.astype(np.float32)).all()
    )
    try:
        d, i = search_embeddings(idx, x, k)
    except ValueError as e:
        assert isinstance(e, InputError) and str(e)
        assert not (ok and _valid_k(k)), f"refused valid input: {e}"
        return
    assert ok and _valid_k(k)
    d2, i2 = search_embeddings(idx, np.ascontiguousarray(x, dtype=np.float32), k)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(i, i2)
    assert i.shape == (len(x), min(int(k), N)) and (i >= 0).all() and (i < N).all()


@SETTINGS
@given(
    xq=hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, 4), st.sampled_from([8, 8, 7])),
        elements=st.one_of(st.floats(-10, 10, width=32), FLOATS),
    ),
    nb=st.integers(0, 30),
    k=K,
)
def test_cosine_knn_validates_or_answers(xq, nb, k):
    xb = np.random.default_rng(nb).standard_normal((nb, 8)).astype(np.float32)
    ok = xq.shape[1] == 8 and np.isfinite(xq).all() and nb > 0
    try:
        s, i = cosine_knn(xq, xb, k)
    except ValueError as e:
        assert isinstance(e, InputError)
        assert not (ok and _valid_k(k)), f"refused valid input: {e}"
        return
    assert ok and _valid_k(k)
    kk = min(int(k), nb)
    assert s.shape == i.shape == (len(xq), kk) and (i >= 0).all() and (i < nb).all()
    assert np.isfinite(s).all()


def test_k_beyond_ntotal_returns_every_item_once(indexes):
    idxs, x, db_codes = indexes
    for kind, idx in idxs.items():
        d, i = search_embeddings(idx, x[:3], 10 * N)
        assert i.shape == (3, N), kind
        assert all(sorted(r) == list(range(N)) for r in i.tolist()), kind


@pytest.mark.parametrize("kind", ["flat", "lookup", "mih"])
def test_empty_index_is_refused(kind):
    from hashindex.probe.artifact import Probe

    probe = Probe("lsh", 16, 4, {}, {}, {"mean": np.zeros(4, np.float32), "W": np.ones((4, 16), np.float32)})
    idx = CodeIndex.from_codes(np.zeros((0, 2), np.uint8), IndexConfig(kind), probe=probe)
    with pytest.raises(InputError, match="empty"):
        hamming_search(idx, np.zeros((1, 2), np.uint8), 3)
    with pytest.raises(InputError, match="empty"):
        search_embeddings(idx, np.ones((1, 4), np.float32), 3)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.ones(DIM, np.float32), "2-D"),
        (np.ones((2, DIM), np.int64), "floating point"),
        (np.ones((2, DIM + 1), np.float32), f"{DIM + 1}-d.*{DIM}-d"),
        (np.full((2, DIM), np.nan, np.float32), "NaN"),
        (np.full((2, DIM), 1e300), "NaN or inf"),  # finite in float64, inf in float32
        (np.ones((1, 2, DIM), np.float32), "2-D"),
        ([[1.0] * DIM, [1.0]], "2-D float array|2-D"),
    ],
)
def test_bad_embeddings_get_clear_messages(indexes, x, match):
    with pytest.raises(ValueError, match=match):
        search_embeddings(indexes[0]["flat"], x, 3)
