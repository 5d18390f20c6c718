"""Seeds in the bench, the asymmetric ranking of the whole database, IVF recall of the flat top-k."""

import json

import numpy as np
import pytest

from hashindex.core.codes import unpack
from hashindex.core.config import BenchConfig, IndexConfig
from hashindex.measure.bench import run_bench
from hashindex.measure.bench_seeds import ivf_rows, summarize
from hashindex.search.asymmetric import asymmetric_knn
from hashindex.search.engines import CodeIndex
from hashindex.search.ranking import hamming_search


def test_asymmetric_knn_matches_numpy_reference(rng):
    logits = rng.standard_normal((30, 16)).astype(np.float32) * 3
    db = rng.integers(0, 256, (200, 2), dtype=np.uint8)
    db[100:110] = db[5]  # equal codes: equal distances, ordered by id
    d, i = asymmetric_knn(logits, db, 25, chunk_bytes=4 * 200 * 7)  # several query blocks
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ref = np.abs(p[:, None, :] - unpack(db)[None].astype(np.float64)).sum(2)
    for q in range(30):
        order = np.lexsort((np.arange(200), np.round(ref[q], 4)))[:25]
        np.testing.assert_array_equal(i[q], order)
        np.testing.assert_allclose(d[q], ref[q, order], rtol=1e-5)
    assert asymmetric_knn(logits, db, 1000)[1].shape == (30, 200)


def test_summarize():
    r = summarize("crovca", 16, "hamming", [0, 1, 2], [0.7, 0.6, 0.8], 1)
    assert r["mean"] == pytest.approx(0.7) and r["min"] == 0.6 and r["default"] == 0.6
    assert r["std"] == pytest.approx(np.std([0.7, 0.6, 0.8]))


def test_ivf_recall_against_flat(rng):
    codes = rng.integers(0, 256, (3000, 4), dtype=np.uint8)
    q = rng.integers(0, 256, (40, 4), dtype=np.uint8)
    y = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 3000)]
    yq = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 40)]
    flat = CodeIndex.from_codes(codes, IndexConfig("flat"))  # only the codes are searched: no probe
    ivf = CodeIndex.from_codes(codes, IndexConfig("ivf", nlist=64))
    assert ivf.kind == "ivf"
    k = 100
    fd, fi = hamming_search(flat, q, k)
    rows = {r["nprobe"]: r for r in ivf_rows(ivf.engine.fi, fi, fd, q, yq, y, k, (1, 64, 65))}
    assert set(rows) == {1, 64}  # nprobe beyond nlist is skipped
    full = rows[64]
    assert full["recall_ties"] == 1.0 and full["complete"] == 1.0 and full["map"] is not None
    assert 0.8 <= full["recall"] <= 1.0  # exact search: only ties at the k-th distance differ
    one = rows[1]  # ~47 codes per list: fewer than k come back, so no mAP
    assert one["complete"] < 1.0 and one["map"] is None and one["recall"] < 0.6
    ivf.engine.fi.nprobe = 1  # recall by hand
    assert one["recall"] == pytest.approx(
        np.mean([np.isin(fi[r], ivf.engine.fi.search(q[r : r + 1], k)[1][0]).sum() for r in range(40)]) / k
    )


def test_bench_with_seeds(tmp_path, clusters):
    cfg = BenchConfig(
        methods=("itq", "crovca"),
        bits=(16,),
        topk=50,
        rerank=2,
        epochs=1,
        seeds=(0, 1, 2),
        nprobes=(1,),
        speed_queries=40,
        latency_queries=5,
        scales=(3000,),
        float_scale=3000,
    )
    run_bench(clusters, clusters, tmp_path / "rep", cfg, progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {(r["method"], r["mode"]): r for r in doc["seeds"]}
    assert set(rows) == {("crovca", "hamming"), ("crovca", "asymmetric")}  # ITQ is not seeded by training
    h = rows[("crovca", "hamming")]
    assert h["seeds"] == [0, 1, 2] and len(h["maps"]) == 3
    assert h["min"] == min(h["maps"]) and h["mean"] == pytest.approx(np.mean(h["maps"]))
    q = {(x["method"], x["mode"]): x for x in doc["quality"]}
    assert h["default"] == q[("crovca", "hamming")]["map"]
    assert rows[("crovca", "asymmetric")]["default"] == q[("crovca", "asymmetric")]["map"]
    assert ("itq", "asymmetric") in q
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Quality across seeds" in md and "Asymmetric ranking of the whole database" in md


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_evaluate_reports_asymmetric_ranking_and_ivf_recall(tmp_path, clusters, kind):
    from hashindex import build_index
    from hashindex.core.config import FitConfig
    from hashindex.measure.evaluate import evaluate
    from hashindex.measure.metrics import mean_average_precision, relevance
    from hashindex.probe.fit import fit_probe

    fit_probe(clusters, FitConfig(bits=16, epochs=1), progress=False).save(tmp_path / "p")
    config = IndexConfig(kind, nlist=32) if kind == "ivf" else IndexConfig("flat")
    idx = build_index(clusters, tmp_path / "p", tmp_path / "idx", config)
    assert idx.kind == kind
    r = evaluate(idx, clusters, topk=50, with_float=False, nprobe=1 if kind == "ivf" else None)
    x, y = clusters.embeddings(), clusters.labels()
    snap = idx.snapshot
    _, ids = asymmetric_knn(snap.probe.logits(x), snap.codes, 50)
    assert r["asymmetric_map"] == pytest.approx(mean_average_precision(relevance(y, y, ids)))
    if kind == "flat":
        assert r["ivf"] is None
    else:
        assert 0 <= r["ivf"]["recall"] <= r["ivf"]["recall_ties"] <= 1 and r["ivf"]["nprobe"] == 1


def test_cli_int_list_option():
    from click.testing import CliRunner

    from hashindex.cli.main import cli

    res = CliRunner().invoke(cli, ["bench", "a.h5", "b.h5", "-o", "x", "--seeds", "0,x"])
    assert res.exit_code == 2 and "expected comma-separated ints" in res.output
    res = CliRunner().invoke(cli, ["bench", "a.h5", "b.h5", "-o", "x", "--seeds", ","])
    assert res.exit_code == 2 and "expected a comma-separated list" in res.output
