"""The bench report on small synthetic data, and its metrics on hand-computed cases."""

import json

import numpy as np
import pytest

from hashindex.core.codes import default_mih_tables, pack
from hashindex.measure.bench import BenchConfig, radius_curves, run_bench


def test_radius_curves_by_hand():
    # 8-bit codes; query 0 has distances 0, 1, 3 to items 0, 1, 2; query 1 has no hit within r <= 2
    db = pack(np.array([[1] * 8, [1] * 7 + [-1], [1] * 5 + [-1] * 3], dtype=float))
    q = pack(np.array([[1] * 8, [-1] * 8], dtype=float))
    yb = np.array([[1, 0], [0, 1], [1, 0]], np.uint8)
    yq = np.array([[1, 0], [0, 1]], np.uint8)
    c = radius_curves(q, db, yq, yb)
    # query 0: r=0 -> 1/1; r=1 -> 1/2; r=3 -> 2/3. query 1 (distances 8, 7, 5): nothing within 2.
    assert c["precision_r2"] == pytest.approx((0.5 + 0.0) / 2)
    assert c["precision"][0] == pytest.approx(1.0) and c["precision"][1] == pytest.approx(0.5)
    assert c["recall"][0] == pytest.approx((0.5 + 0) / 2)
    assert c["recall"][8] == pytest.approx(1.0)
    assert c["precision"][7] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_run_bench_writes_report(tmp_path, clusters):
    cfg = BenchConfig(
        methods=("lsh", "crovca"),
        bits=(16, 32),
        topk=50,
        rerank=2,
        epochs=1,
        nprobes=(1, 2),
        speed_queries=40,
        latency_queries=5,
        scales=(3000,),
        float_scale=3000,
        ivf_nlist=8,
    )
    r = run_bench(clusters, clusters, tmp_path / "rep", cfg, progress=False)
    for f in ("report.json", "report.md", "map_vs_bits.png", "qps_vs_map.png", "pr_curves.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(doc) >= {
        "version",
        "date",
        "machine",
        "config",
        "quality",
        "pr_curves",
        "fit",
        "speed",
        "memory",
        "targets",
    }
    modes = {(x["method"], x["bits"], x["mode"]) for x in doc["quality"]}
    assert (
        ("crovca", 16, "hamming") in modes
        and ("lsh", 32, "rerank-float-2") in modes
        and ("lsh", 16, "asymmetric-2") in modes
    )
    assert all(0 <= x["map"] <= 1 for x in doc["quality"])
    kinds = {(s["scope"], s["kind"], s.get("bits")) for s in doc["speed"]}
    assert ("collection", "lookup", 16) in kinds and ("synthetic", "flat", 32) in kinds
    assert ("synthetic", "float-IndexFlatIP", None) in kinds and ("collection", "ivf-nprobe2", 32) in kinds
    assert all(s["qps"] > 0 and s["p99_ms"] >= s["p50_ms"] for s in doc["speed"])
    flat = [s for s in doc["speed"] if s["kind"] == "flat" and s["scope"] == "synthetic"]
    assert [s["index_bytes_per_item"] for s in flat] == pytest.approx([2.0, 4.0], abs=0.1)
    assert [s["code_bytes_per_item"] * s["n"] for s in flat] == [2 * 3000, 4 * 3000]  # faiss code_size × n
    assert all(
        s["ram_bytes_per_item"] is None and s["ram_note"].startswith("not measured") for s in flat
    )  # 3k < rss_min_items
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "CroVCA unsupervised" in md and "![map_vs_bits.png]" in md
    ps = doc["pipeline_speed"]  # without images: fit and the embeddings query only
    assert ps["embed"] is None and ps["query"]["image"] is None and ps["query"]["embeddings"]["seconds"] > 0
    assert ps["fit"]["bits"] == 32 and ps["fit"]["ratio"] == pytest.approx(
        ps["fit"]["reference"]["seconds"] / ps["fit"]["hashindex"]["seconds"]
    )
    assert (
        "| embed | – | not measured (no `--images`) |" in md
        and "| 3,000 | 16 | 2.01 | 2.00 | not measured (below 1,000,000 items) |" in md
    )
    assert r["targets"] == doc["targets"]
    # not the Fashion-MNIST protocol: its mAP targets are not listed (as unmeasured or otherwise)
    assert not any("mAP@" in t["target"] for t in doc["targets"])
    assert "The mAP targets belong to the Fashion-MNIST protocol" in md
    ivf = doc["synthetic_ivf"]  # IVF on the clustered synthetic codes, 8 lists
    assert [(x["n"], x["bits"], x["nlist"]) for x in ivf] == [(3000, 16, 8), (3000, 32, 8)]
    for x in ivf:
        assert x["at_target"]["recall"] >= 0.95 and x["speedup"] == pytest.approx(x["at_target"]["qps"] / x["flat_qps"])
        assert [s["nprobe"] for s in x["sweep"]][-1] == x["at_target"]["nprobe"]
        assert ("synthetic", f"ivf-nprobe{x['at_target']['nprobe']}", x["bits"]) in kinds
    assert "nprobe at recall ≥ 0.95" in md
    check_exact_search_rows(doc, md)


def check_exact_search_rows(doc, md):
    """mih, auto, k-th neighbour distances and filtered rows of the bench (collection: 800 items
    at 16 and 32 bits; synthetic: 3,000 items, filtered rows at the longest code, 32 bits)."""
    sp = doc["speed"]

    def rows(**kw):
        return [s for s in sp if all(s.get(k) == v for k, v in kw.items())]

    for scope, n in (("collection", 800), ("synthetic", 3000)):
        (mih,) = rows(scope=scope, kind="mih", bits=32)  # 16 bits: the lookup row is that kind
        (lookup,) = rows(scope=scope, kind="lookup", bits=16)
        assert not rows(scope=scope, kind="mih", bits=16) and not rows(scope=scope, kind="lookup", bits=32)
        for r in (mih, lookup):  # distances equal to flat's; ids and ties equal to a NumPy popcount's
            assert r["n"] == n and r["exact"] and r["mismatches"] == 0 and r["checked"] == 20 and r["mean_ms"] > 0
        assert mih["tables"] == default_mih_tables(32, n) and lookup["tables"] == 1 and mih["tables_bytes_per_item"] > 0
        for bits in (16, 32):
            (auto,) = rows(scope=scope, kind="auto", bits=bits)
            # 16 bits: the lookup table; fewer than 4,096 items: a scan, chosen without timing
            assert auto["chosen"] == ("lookup" if bits == 16 else "flat") and auto["reason"].startswith("auto:")
            assert auto["exact"] and auto["choose_seconds"] >= 0
            # the ratio from the searches that took turns with auto: every exact kind measured
            sb = auto["side_by_side"]
            assert set(sb) == {"flat", "auto", "lookup" if bits == 16 else "mih"}
            best = min((k for k in sb if k != "auto"), key=lambda k: sb[k]["mean_ms"])
            assert auto["best_kind"] == best and all(v["mean_ms"] > 0 for v in sb.values())
            assert auto["ratio_to_best"] == pytest.approx(sb["auto"]["mean_ms"] / sb[best]["mean_ms"])
            (kth,) = [x for x in doc["kth_distance"] if x["scope"] == scope and x["bits"] == bits]
            assert kth["n"] == n and kth["k"] == 100 and sum(kth["histogram"].values()) == kth["queries"] == 40
            assert 0 <= kth["min"] <= kth["p10"] <= kth["p50"] <= kth["p90"] <= kth["max"] <= bits
            assert kth["min"] == min(map(int, kth["histogram"])) and kth["max"] == max(map(int, kth["histogram"]))
    filtered = [s for s in sp if "selectivity" in s]
    want = {("collection", b, k) for b, k in ((16, "flat"), (16, "lookup"), (32, "flat"), (32, "mih"))}
    want |= {("synthetic", 32, "flat"), ("synthetic", 32, "mih")}  # the longest code only
    assert {(s["scope"], s["bits"], s["kind"].split("+")[0]) for s in filtered} == want
    for f in filtered:
        assert f["kind"].endswith("+filter") and f["selectivity"] in (0.5, 0.05, 0.001)
        assert f["allowed"] == max(1, round(f["selectivity"] * f["n"]))
        assert f["exact"] and f["mismatches"] == 0 and f["routed"] == "scan of the rows"  # small: scanned
        base = rows(scope=f["scope"], bits=f["bits"], kind=f["kind"].split("+")[0])[0]
        assert f["ratio_to_unfiltered"] == pytest.approx(f["mean_ms"] / base["mean_ms"])
        assert f["kth_p50"] <= f["bits"]
    assert len(filtered) == 6 * 3
    targets = {t["target"]: t for t in doc["targets"]}
    autos = [t for name, t in targets.items() if name.startswith("auto (")]
    assert len(autos) == 4 and all(t["at_most"] and t["threshold"] == 1.5 for t in autos)
    assert all(t["met"] == (t["value"] <= 1.5) for t in autos)
    mih_1m = targets["mih vs faiss IndexBinaryFlat, 1M clustered 64-bit codes, single queries (mean latency ratio)"]
    assert mih_1m["value"] is None and mih_1m["met"] is None  # not at this scale
    assert "## Exact search: multi-index hashing, the automatic choice, filters" in md
    assert "| synthetic | 3,000 | 32 | " in md and "auto → flat" in md and "mih+filter 0.1%" in md
    assert "Distance of the k-th nearest neighbour" in md and "(needs ≤ 1.5)" in md


def test_ivf_at_recall_against_numpy_popcount():
    """The IVF sweep's recall is the fraction of places filled within the flat k-th distance, by a
    NumPy popcount, and the sweep stops at the first nprobe that reaches 0.95."""
    from hashindex.core.codes import hamming
    from hashindex.measure.synthetic import clustered_codes, ivf_at_recall, recall_within

    rng = np.random.default_rng(0)
    codes = clustered_codes(5000, 64, rng)
    db, q = codes[:4900], codes[4900:]
    full = hamming(q, db)  # (100, 4900) by NumPy popcount
    k = 10
    flat_d = np.sort(full, axis=1)[:, :k]
    iv = ivf_at_recall(db, q, flat_d.astype(np.int32), nlist=16)
    fi = iv["index"]
    for row in iv["sweep"]:
        fi.nprobe = row["nprobe"]
        d, i = fi.search(q, k)
        found = i >= 0
        ok = np.array([(full[r, i[r][found[r]]] <= flat_d[r, -1]).sum() for r in range(len(q))])
        assert row["recall"] == pytest.approx(ok.mean() / k)
        assert recall_within(d, i, flat_d) == pytest.approx(ok.mean() / k)
    assert iv["at_target"]["recall"] >= 0.95 and all(r["recall"] < 0.95 for r in iv["sweep"][:-1])
