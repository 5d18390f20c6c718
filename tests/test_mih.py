"""Exactness of multi-index hashing (the ``mih`` kind) against a NumPy popcount reference.

The reference (:func:`hashindex.core.codes.hamming`, a byte popcount table) ranks every row by
(distance, row); ``mih`` must return the same rows and distances, ties by row (= by id), for any
code length (whole words, and 40 bits: a padded word), any number of tables, any k (beyond the
rows that qualify too), on random codes, clustered codes, many duplicates (ties everywhere), with
filters (row lists and masks, selective and broad), and through a real index folder after adds,
removes, ``where=`` filters and a compaction.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_embeddings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashindex.core.codes import hamming
from hashindex.core.config import IndexConfig
from hashindex.index.mih import MIHTables
from hashindex.measure.synthetic import clustered_codes
from hashindex.search import kernels
from hashindex.search.engines import CodeIndex, MIHEngine
from hashindex.search.filters import Allowed

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BITS = (32, 40, 64, 128, 256)
MAX_SUBSTRING = 20  # keep a table's directory (2^length offsets) small in tests


def reference(q: np.ndarray, codes: np.ndarray, k: int, rows: np.ndarray | None = None):
    """``(D, rows)`` of the k nearest rows (among ``rows`` when given) by (distance, row)."""
    rows = np.arange(len(codes)) if rows is None else np.asarray(rows)
    h = hamming(q, codes[rows]).astype(np.int64)
    order = np.lexsort((np.broadcast_to(rows, h.shape), h), axis=1)[:, :k]
    return np.take_along_axis(h, order, 1), rows[order]


def assert_same(got, want):
    d, p = got
    wd, wp = want
    assert d.shape == wd.shape and p.shape == wp.shape
    np.testing.assert_array_equal(p, wp)
    np.testing.assert_array_equal(d, wd)


class Fallbacks:
    """Counts the queries ``mih_topk`` hands to the scan (a probe costing more than a scan)."""

    def __init__(self, monkeypatch):
        self.rows = 0
        scan = kernels.scan_topk

        def spy(codes, q, *a, **kw):
            self.rows += len(q)
            return scan(codes, q, *a, **kw)

        monkeypatch.setattr(kernels, "scan_topk", spy)


def draw_codes(kind: str, n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    nb = bits // 8
    if kind == "random":
        return rng.integers(0, 256, (n, nb), dtype=np.uint8)
    if kind == "clustered":  # the benchmarks' generator: 4,096 centres, bits flipped with p = 1/8
        return clustered_codes(n, bits, rng)
    if kind == "tight":  # few centres, few bits flipped: close neighbours, so the probes answer
        centres = rng.integers(0, 2, (int(rng.integers(1, 9)), bits), dtype=np.uint8)
        flips = rng.random((n, bits)) < rng.choice([1 / 128, 1 / 64, 1 / 16])
        return np.packbits(centres[rng.integers(0, len(centres), n)] ^ flips, axis=1)
    # "dups": a handful of distinct codes, each repeated: equal distances everywhere
    distinct = rng.integers(0, 256, (int(rng.integers(1, 6)), nb), dtype=np.uint8)
    return distinct[rng.integers(0, len(distinct), n)]


def draw_queries(codes: np.ndarray, nq: int, rng: np.random.Generator, far: bool = True) -> np.ndarray:
    """Database codes, database codes with a few bits flipped, and (``far``) random codes."""
    bits = codes.shape[1] * 8
    q = codes[rng.integers(0, len(codes), nq)].copy()
    unpacked = np.unpackbits(q, axis=1)
    for r in range(nq):
        how = rng.integers(0, 3 if far else 2)
        if how == 1:
            unpacked[r, rng.choice(bits, int(rng.integers(1, 6)), replace=False)] ^= 1
        elif how == 2:
            unpacked[r] = rng.integers(0, 2, bits)
    return np.packbits(unpacked, axis=1)


@st.composite
def collections(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    bits = draw(st.sampled_from(BITS))
    n = draw(st.integers(1, 1500))
    kind = draw(st.sampled_from(["random", "clustered", "dups", "tight", "tight", "tight"]))
    lo = -(-bits // MAX_SUBSTRING)
    m = draw(st.one_of(st.none(), st.integers(lo, min(bits, lo + 12))))
    k = draw(st.one_of(st.integers(1, 20), st.integers(1, n + 20)))  # small k: answered by probing more often
    return seed, bits, n, kind, m, k


@SETTINGS
@given(collections())
def test_mih_equals_popcount_reference(case):
    seed, bits, n, kind, m, k = case
    rng = np.random.default_rng(seed)
    codes = draw_codes(kind, n, bits, rng)
    q = draw_queries(codes, 6, rng)
    ix = CodeIndex.from_codes(codes, IndexConfig("mih", tables=m))
    assert ix.kind == "mih" and ix.engine.tables.m == (m or IndexConfig("mih").resolved(n, bits).tables)
    assert_same(ix.search(q, k), reference(q, codes, min(k, n)))
    # the kernel itself, one query at a time too (as the service calls it)
    for r in range(len(q)):
        assert_same(
            kernels.mih_topk(ix.engine.tables, codes, q[r : r + 1], min(k, n)),
            reference(q[r : r + 1], codes, min(k, n)),
        )


@st.composite
def filtered(draw):
    seed, bits, n, kind, m, k = draw(collections())
    share = draw(st.sampled_from([0.001, 0.05, 0.5, 0.95, 1.0]))
    as_mask = draw(st.booleans())
    return seed, bits, n, kind, m, k, share, as_mask


@SETTINGS
@given(filtered())
def test_mih_with_filters_equals_reference_over_allowed_rows(case):
    """Allowed rows (as a sorted list or a mask): the public path (a selective filter is scanned)
    and the engine's own (the mask applied while probing) both give the reference over those rows."""
    seed, bits, n, kind, m, k, share, as_mask = case
    rng = np.random.default_rng(seed)
    codes = draw_codes(kind, n, bits, rng)
    q = draw_queries(codes, 5, rng)
    rows = np.sort(rng.choice(n, max(1, int(round(share * n))), replace=False))
    mask = np.zeros(n, bool)
    mask[rows] = True
    allowed = Allowed(mask=mask) if as_mask else Allowed(rows=rows)
    ix = CodeIndex.from_codes(codes, IndexConfig("mih", tables=m))
    want = reference(q, codes, min(k, len(rows)), rows)
    assert_same(ix.search(q, k, allowed=allowed), want)
    assert_same(ix.engine.search(q, min(k, len(rows)), allowed=Allowed(mask=mask)), want)


def test_probing_answers_without_the_scan_and_exactly(monkeypatch):
    """On close neighbours the probes answer (the scan fallback takes few queries), at every
    code length, unfiltered and with a broad mask: the exactness tests cover the probing path."""
    spy = Fallbacks(monkeypatch)
    rng = np.random.default_rng(7)
    total = 0
    for bits in BITS:
        codes = draw_codes("tight", 3000, bits, rng)
        q = draw_queries(codes, 40, rng, far=False)
        ix = CodeIndex.from_codes(codes, IndexConfig("mih"))
        for k in (1, 10, 50):
            assert_same(ix.search(q, k), reference(q, codes, k))
            total += len(q)
        keep = rng.random(len(codes)) < 0.7
        assert_same(ix.engine.search(q, 10, allowed=Allowed(mask=keep)), reference(q, codes, 10, np.flatnonzero(keep)))
        total += len(q)
    assert spy.rows < 0.25 * total, f"{spy.rows} of {total} queries fell back to the scan"


@pytest.mark.parametrize("bits", [32, 40, 64, 128, 256])
def test_every_table_count_and_every_k(bits):
    """Every number of tables from the fewest allowed here to many, k from 1 to past ntotal,
    on clustered codes with duplicated rows (ties by row)."""
    rng = np.random.default_rng(bits)
    codes = draw_codes("tight", 500, bits, rng)
    codes[250:300] = codes[0]  # 51 equal codes
    q = np.concatenate([codes[:2], draw_queries(codes, 6, rng)])
    lo = -(-bits // MAX_SUBSTRING)
    for m in sorted({lo, lo + 1, lo + 3, 2 * lo + 1, min(bits, 3 * lo + 2)}):
        tables = MIHTables.build(codes, m)
        for k in (1, 2, 51, 52, 499, 500):
            assert_same(kernels.mih_topk(tables, codes, q, k), reference(q, codes, k))
        ix = CodeIndex(codes, None, MIHEngine(codes, tables), "mih")
        assert_same(ix.search(q, 10_000), reference(q, codes, 500))


@pytest.mark.parametrize("bits", [64, 128])
def test_tables_saved_row_major_before_still_load(tmp_path, bits):
    """Folders written before the codes were stored word-major (``mih_codes.npy``, (m, n, W))
    load and answer as the tables saved now."""
    from hashindex.index.mih import CODES_FILE, ROW_MAJOR_CODES_FILE

    rng = np.random.default_rng(bits)
    codes = draw_codes("tight", 300, bits, rng)
    q = draw_queries(codes, 5, rng)
    tables = MIHTables.build(codes, 8)
    tables.save(tmp_path)
    now = MIHTables.load(tmp_path, bits, len(codes), 8)
    np.save(tmp_path / ROW_MAJOR_CODES_FILE, np.ascontiguousarray(tables.codes.transpose(0, 2, 1)))
    (tmp_path / CODES_FILE).unlink()
    before = MIHTables.load(tmp_path, bits, len(codes), 8)
    assert before.codes.shape == now.codes.shape == (8, bits // 64, len(codes))
    for t in (now, before):
        assert_same(kernels.mih_topk(t, codes, q, 20), reference(q, codes, 20))
    np.save(tmp_path / ROW_MAJOR_CODES_FILE, np.zeros((8, len(codes) + 1, bits // 64), np.uint64))
    with pytest.raises(ValueError, match="layout needs"):
        MIHTables.load(tmp_path, bits, len(codes), 8)


def test_empty_and_single_row():
    codes = np.array([[1, 2, 3, 4, 5, 6, 7, 8]], np.uint8)
    ix = CodeIndex.from_codes(codes, IndexConfig("mih"))
    d, p = ix.search(np.zeros((2, 8), np.uint8), 5)
    assert p.tolist() == [[0], [0]] and d.tolist() == [[13], [13]]  # popcounts of 1..8
    assert ix.search(np.zeros((0, 8), np.uint8), 3)[0].shape == (0, 1)


# -- through an index folder: build, add, remove, filters, compaction ----------------------------

CLASSES = ["T-shirt", "Trouser", "Bag", "Boot", "Coat", "Dress"]
DIM = 32


class Model:
    """What the index should hold, kept apart from it: id -> embedding, label, year, shop."""

    def __init__(self):
        self.x, self.label, self.year, self.shop = {}, {}, {}, {}

    def put(self, ids, x, labels, years, shops):
        for i, xi, lab, yr, sh in zip(ids, x, labels, years, shops):
            self.x[int(i)], self.label[int(i)], self.year[int(i)], self.shop[int(i)] = xi, lab, yr, sh

    def drop(self, ids):
        for i in ids:
            for d in (self.x, self.label, self.year, self.shop):
                del d[int(i)]

    def ids(self, pred=lambda i: True) -> np.ndarray:
        return np.array(sorted(i for i in self.x if pred(i)), np.int64)


WHERES = [
    (None, lambda m, i: True),
    ({"label": "Trouser"}, lambda m, i: m.label[i] == "Trouser"),
    ("label!=Bag", lambda m, i: m.label[i] != "Bag"),
    ({"label": ["Boot", "Coat"]}, lambda m, i: m.label[i] in ("Boot", "Coat")),
    ("year>=2015", lambda m, i: m.year[i] >= 2015),
    ({"year": {">=": 2003, "<": 2006}, "shop": "b"}, lambda m, i: 2003 <= m.year[i] < 2006 and m.shop[i] == "b"),
    ("shop=a,c", lambda m, i: m.shop[i] in ("a", "c")),
]


def draw_items(rng, centres, n):
    y = rng.integers(0, len(CLASSES), n)
    x = (centres[y] + 0.4 * rng.standard_normal((n, DIM))).astype(np.float32)
    return x, [CLASSES[c] for c in y], rng.integers(2000, 2020, n).tolist(), rng.choice(["a", "b", "c"], n).tolist()


def check_index(ix, model: Model, queries: np.ndarray):
    snap = ix.snapshot
    assert ix.kind == "mih"
    np.testing.assert_array_equal(snap.ids, model.ids())
    codes = snap.probe.encode(np.stack([model.x[i] for i in model.ids()]))
    np.testing.assert_array_equal(snap.codes, codes)  # the rows hold the model's items' codes
    qc = snap.probe.encode(queries)
    for where, pred in WHERES:
        ok = model.ids(lambda i, pred=pred: pred(model, i))
        rows = np.searchsorted(model.ids(), ok)
        for k, nq in ((1, len(qc)), (7, len(qc)), (len(ok) + 5, 2)):  # every item allowed: 2 queries (hits cost)
            want_d, want_rows = reference(qc[:nq], codes, min(k, len(ok)), rows)
            res = ix.search(queries[:nq], k, where=where)
            np.testing.assert_array_equal(res.ids, model.ids()[want_rows], err_msg=f"where={where!r} k={k}")
            np.testing.assert_array_equal(res.distances, want_d, err_msg=f"where={where!r} k={k}")
        some = ok[::3]  # ids= on top of the filter
        if len(some):
            want_d, want_rows = reference(qc, codes, min(5, len(some)), np.searchsorted(model.ids(), some))
            res = ix.search(queries, 5, where=where, ids=some)
            np.testing.assert_array_equal(res.ids, model.ids()[want_rows])
            np.testing.assert_array_equal(res.distances, want_d)


def test_index_folder_add_remove_filter_compact(tmp_path):
    from hashindex import build_index, open_index
    from hashindex.core.config import FitConfig
    from hashindex.probe.fit import fit_probe

    rng = np.random.default_rng(11)
    centres = 2.0 * rng.standard_normal((len(CLASSES), DIM))
    x0, lab0, year0, shop0 = draw_items(rng, centres, 500)
    onehot = np.zeros((len(x0), len(CLASSES)), np.uint8)
    onehot[np.arange(len(x0)), [CLASSES.index(v) for v in lab0]] = 1
    emb = write_embeddings(tmp_path / "e.h5", x0, labels=onehot, label_names=CLASSES)
    fit_probe(emb, FitConfig(method="lsh", bits=64), progress=False).save(tmp_path / "probe")
    ix = build_index(emb, tmp_path / "probe", tmp_path / "ix", kind="mih", metadata={"year": year0, "shop": shop0})
    model = Model()
    model.put(ix.snapshot.ids, x0, lab0, year0, shop0)
    queries = np.concatenate([x0[:4], draw_items(rng, centres, 4)[0], rng.standard_normal((2, DIM)).astype(np.float32)])
    check_index(ix, model, queries)

    x1, lab1, year1, shop1 = draw_items(rng, centres, 120)
    ids1 = ix.add(x1, labels=lab1, metadata={"year": year1, "shop": shop1})
    model.put(ids1, x1, lab1, year1, shop1)
    gone = np.concatenate([model.ids()[::7], ids1[::5]])
    gone = np.unique(gone)
    ix.remove(gone)
    model.drop(gone)
    x2, lab2, year2, shop2 = draw_items(rng, centres, 40)
    ids2 = ix.add(x2, labels=lab2, metadata={"year": year2, "shop": shop2})
    model.put(ids2, x2, lab2, year2, shop2)
    q2 = np.concatenate([queries, x1[:2], x2[:2]])
    check_index(ix, model, q2)

    ix.compact()
    check_index(ix, model, q2)
    check_index(open_index(tmp_path / "ix"), model, q2)


def test_a_filter_kept_between_searches_answers_every_thread_exactly():
    """Columns keep recent filters (and the masks searches make of them): searches on several
    threads sharing one fresh filter each get the reference answer, and a bounded number stay kept."""
    from concurrent.futures import ThreadPoolExecutor

    from hashindex.search import filters
    from hashindex.search.filters import Columns, parse_where, resolve

    rng = np.random.default_rng(3)
    n = 20_000
    codes = clustered_codes(n, 64, rng)
    year = rng.integers(1990, 2030, n).astype(np.float64)
    cols = Columns(n, meta={"year": year})
    ix = CodeIndex.from_codes(codes, IndexConfig("mih"))
    q = draw_queries(codes, 16, rng)
    where = parse_where("year>=1995")  # broad: searched by mih with a mask
    want = reference(q, codes, 10, np.flatnonzero(year >= 1995))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: ix.search(q[i : i + 1], 10, allowed=resolve(where, cols)), range(len(q))))
    for i, (d, p) in enumerate(got):
        assert_same((d, p), (want[0][i : i + 1], want[1][i : i + 1]))
    assert resolve(where, cols) is resolve(where, cols)
    for y in range(1990, 1990 + 2 * filters.RECENT):
        resolve(parse_where(f"year>={y}"), cols)
    assert len(cols._recent) == filters.RECENT


def test_build_without_a_table_count_times_the_candidates(monkeypatch):
    """``mih`` without ``tables``: the count is the fastest of the candidates on the collection's
    own codes (timings recorded in the reason), and the answers stay exact; a count given, or a
    collection past the timing bound, is taken as is."""
    from hashindex.search import auto

    rng = np.random.default_rng(7)
    codes = clustered_codes(20_000, 128, rng)
    counts = auto.table_counts(128, len(codes))
    assert len(counts) == 2 and counts[0] < counts[1] == IndexConfig("mih").resolved(len(codes), 128).tables
    # the timing decides: make one candidate slower, then the other
    real = auto._per_query_ms
    for slow in counts:
        calls = iter(counts)

        def timed(search, queries, real=real, calls=calls, slow=slow):
            return real(search, queries) + (1.0 if next(calls) == slow else 0.0)

        monkeypatch.setattr(auto, "_per_query_ms", timed)
        cfg, tables = auto.choose(codes, IndexConfig("mih"))
        assert cfg.kind == "mih" and cfg.tables == next(c for c in counts if c != slow) == tables.m
        assert all(f"{c} tables" in cfg.reason for c in counts)
        q = draw_queries(codes, 8, rng)
        assert_same(CodeIndex(codes, None, MIHEngine(codes, tables), "mih").search(q, 50), reference(q, codes, 50))
    monkeypatch.undo()
    cfg, tables = auto.choose(codes, IndexConfig("mih", approximate=True))  # the flag is auto's: mih stays
    assert cfg.kind == "mih" and cfg.tables in counts
    cfg, tables = auto.choose(codes, IndexConfig("mih", tables=7))
    assert (cfg.tables, tables) == (7, None)
    monkeypatch.setattr(auto, "TIMED_TABLES_MAX_N", 10_000)
    cfg, tables = auto.choose(codes, IndexConfig("mih"))
    assert cfg.tables == counts[1] and tables is None
