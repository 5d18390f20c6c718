"""The GPU Hamming search (hashindex.search.gpu) against the NumPy popcount reference and faiss
IndexBinaryFlat: the torch engine runs here on the CPU; the tests marked ``gpu`` repeat the checks
on CUDA (``pytest -m gpu``; skipped without a CUDA device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashindex.core.codes import hamming
from hashindex.core.config import IndexConfig
from hashindex.core.errors import InputError
from hashindex.search.engines import CodeIndex
from hashindex.search.gpu import FaissGpuHamming, TorchHamming, device_search, search_device
from hashindex.search.ranking import hamming_rows, hamming_search

BITS = [16, 32, 64, 128, 256]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda" and not _cuda():
        pytest.skip("no CUDA device")
    return request.param


def reference_topk(xq, xb, k, ids=None):
    """Exact top-k by (distance, id) from the popcount table: ``(D, I)``."""
    d = hamming(xq, xb)
    ids = np.arange(len(xb)) if ids is None else np.asarray(ids)
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def _codes_with_ties(rng, n, nbytes):
    xb = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    xb[n // 4 : n // 4 + n // 10] = xb[0]  # a block of duplicates: k=100 cuts through its ties
    return xb


def _check(got, want):
    (d, i), (rd, ri) = got, want
    assert d.dtype == np.int32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


def _index(codes, ids=None):
    return CodeIndex.from_codes(codes, IndexConfig("flat"), ids=ids)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("nq", [1, 37])
def test_equals_the_popcount_reference_with_ties_by_id(rng, device, bits, nq):
    xb = _codes_with_ties(rng, 5000, bits // 8)
    xq = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    xq[0] = xb[0]  # 501 codes at distance 0
    _check(TorchHamming(xb, device).search(xq, 100), reference_topk(xq, xb, 100))


@pytest.mark.parametrize("bits", BITS)
def test_equals_faiss_index_binary_flat(rng, device, bits):
    """faiss's own order (no re-sorting): few distinct byte values make ties at every distance."""
    xb = rng.integers(0, 4, (3000, bits // 8), dtype=np.uint8)
    xq = rng.integers(0, 4, (25, bits // 8), dtype=np.uint8)
    fi = faiss.IndexBinaryFlat(bits)
    fi.add(xb)
    for k in (1, 10, 1000):
        d, i = fi.search(xq, k)
        _check(TorchHamming(xb, device).search(xq, k), (d.astype(np.int32), i.astype(np.int64)))


@pytest.mark.parametrize("chunk", [1, 7, 64, 299, 300, 301])
def test_chunk_boundaries_and_query_blocks_do_not_change_results(rng, device, chunk):
    xb = _codes_with_ties(rng, 300, 8)
    xq = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    xq[:3] = xb[0]
    want = reference_topk(xq, xb, 20)
    _check(TorchHamming(xb, device, chunk=chunk).search(xq, 20), want)
    # a budget of one pair: one query against one database row at a time
    _check(TorchHamming(xb, device, memory_bytes=1).search(xq, 20), want)


@pytest.mark.parametrize("budget, chunk", [(1 << 14, None), (1 << 20, 256), (100, None)])
def test_every_block_stays_within_the_memory_budget(rng, monkeypatch, budget, chunk):
    xb = rng.integers(0, 256, (600, 16), dtype=np.uint8)
    xq = rng.integers(0, 256, (8, 16), dtype=np.uint8)
    s = TorchHamming(xb, memory_bytes=budget, chunk=chunk)
    blocks, inner = [], TorchHamming._distances
    monkeypatch.setattr(
        TorchHamming, "_distances", lambda self, q, db: blocks.append((len(q), len(db))) or inner(self, q, db)
    )
    _check(s.search(xq, 10), reference_topk(xq, xb, 10))
    pairs = max(1, budget // s.pair_bytes)  # a block of one pair even when the budget is smaller
    assert blocks and all(q * r <= pairs and r <= (chunk or r) for q, r in blocks)
    assert sum(q * r for q, r in blocks) == len(xq) * len(xb)  # every pair once


def test_k_larger_than_n_returns_every_code(rng, device):
    xb = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    xb[5:] = xb[0]
    d, i = TorchHamming(xb, device).search(xb[:3], 50)
    assert i.shape == (3, 10)
    _check((d, i), reference_topk(xb[:3], xb, 10))


def test_ties_are_ordered_by_the_given_ids(rng, device):
    xb = rng.integers(0, 2, (500, 8), dtype=np.uint8)  # few distinct codes
    ids = rng.permutation(10_000)[:500].astype(np.int64) * 3  # unsorted, gapped
    xq = rng.integers(0, 2, (11, 8), dtype=np.uint8)
    _check(TorchHamming(xb, device, ids, chunk=33).search(xq, 120), reference_topk(xq, xb, 120, ids))


def test_no_queries_and_bad_queries(rng):
    s = TorchHamming(rng.integers(0, 256, (20, 8), dtype=np.uint8))
    d, i = s.search(np.zeros((0, 8), np.uint8), 5)
    assert d.shape == i.shape == (0, 5)
    with pytest.raises(InputError, match="queries must be"):
        s.search(np.zeros((2, 4), np.uint8), 5)


@st.composite
def cases(draw):
    nbytes = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 12, 16, 32, 128]))
    n = draw(st.integers(1, 300))
    alphabet = draw(st.sampled_from([2, 3, 256]))  # small alphabets: many equal distances
    seed = draw(st.integers(0, 2**32 - 1))
    r = np.random.default_rng(seed)
    xb = r.integers(0, alphabet, (n, nbytes), dtype=np.uint8)
    xq = r.integers(0, alphabet, (draw(st.integers(1, 6)), nbytes), dtype=np.uint8)
    return xb, xq, draw(st.integers(1, n + 20)), draw(st.integers(1, n + 3)), draw(st.sampled_from([None, 1, 300]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_any_codes_any_blocks_equal_the_reference(case):
    xb, xq, k, chunk, memory = case
    _check(TorchHamming(xb, "cpu", chunk=chunk, memory_bytes=memory).search(xq, k), reference_topk(xq, xb, k))


def test_device_search_of_an_index_and_of_a_snapshot_equals_faiss(rng, device):
    """The device engine of a code index answers with rows, as faiss does on the CPU: for a
    folder's codes (ids = rows) and for a live snapshot's (rows in id order, gapped ids); the codes
    go to the device once per code index, and another code index (a commit) gets its own engine."""
    xb = _codes_with_ties(rng, 2000, 8)
    xq = xb[:20]
    hi = _index(xb)
    assert hi.device_cache is None
    _check(device_search(hi, xq, 60, device), hamming_rows(hi, xq, 60))
    cached = hi.device_cache
    assert cached is not None and cached[0] == device
    _check(device_search(hi, xq, 60, device), hamming_rows(hi, xq, 60))
    assert hi.device_cache is cached  # kept between searches
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    snap = _index(xb, ids)
    assert snap.device_cache is None  # not carried over from hi
    d, rows = device_search(snap, xq, 60, device)
    _check((d, rows), hamming_rows(snap, xq, 60))
    _check((d, snap.ids[rows]), hamming_search(snap, xq, 60))
    _check((d, snap.ids[rows]), reference_topk(xq, xb, 60, ids))
    keep = np.ones(2000, bool)
    keep[::3] = False
    after = _index(xb[keep], ids[keep])
    assert after.device_cache is None
    d, rows = device_search(after, xq, 60, device)
    _check((d, rows), hamming_rows(after, xq, 60))
    _check((d, after.ids[rows]), reference_topk(xq, xb[keep], 60, ids[keep]))


def test_search_device_names():
    assert search_device(None) == search_device("cpu") == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        search_device("tpu")


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"), reason="a machine with an NVIDIA driver")
def test_without_cuda_auto_searches_on_the_cpu_without_torch_and_cuda_is_refused(rng):
    code = (
        "import sys, numpy as np\nfrom hashindex.core.config import IndexConfig\n"
        "from hashindex.search.engines import CodeIndex\n"
        "from hashindex.search.ranking import hamming_search\nfrom hashindex.core.errors import InputError\n"
        "xb = np.random.default_rng(0).integers(0, 256, (50, 2), dtype=np.uint8)\n"
        "i = CodeIndex.from_codes(xb, IndexConfig('flat'))\nd, ids = hamming_search(i, xb[:2], 1, device='auto')\n"
        "try:\n    hamming_search(i, xb[:2], 1, device='cuda')\nexcept InputError as e:\n    print(e)\n"
        "print(ids.ravel().tolist(), 'torch' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["--device cuda was given but no CUDA device is available", "[0, 1] False"]


@pytest.mark.gpu
def test_hamming_search_on_cuda_equals_the_cpu(rng):
    if not _cuda():
        pytest.skip("no CUDA device")
    for bits in BITS:
        xb = _codes_with_ties(rng, 20_000, bits // 8)
        xq = np.concatenate([xb[:5], rng.integers(0, 256, (40, bits // 8), dtype=np.uint8)])
        hi = _index(xb)
        _check(hamming_search(hi, xq, 100, device="cuda"), hamming_search(hi, xq, 100))
        assert hi.device_cache[0] == "cuda"


@pytest.mark.gpu
def test_faiss_gpu_engine_equals_the_cpu(rng):
    if not (hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0):
        pytest.skip("faiss without GPU support")
    xb = rng.integers(0, 2, (5000, 8), dtype=np.uint8)  # thousands of ties: widens past faiss's k limit
    xq = rng.integers(0, 2, (30, 8), dtype=np.uint8)
    for k in (1, 10, 100, 2048, 3000):
        _check(FaissGpuHamming(xb).search(xq, k), reference_topk(xq, xb, k))
