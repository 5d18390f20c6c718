"""Format stability: the committed golden artifacts (tests/golden/<versions>/, written by
tests/golden/make_golden.py) must load, verify, and give exactly the recorded codes and top-k,
every set (old formats included) through the public API and through the engines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import hashindex
from hashindex.core.config import IndexConfig
from hashindex.index.load import load_index
from hashindex.index.manifest import INDEX_FORMAT
from hashindex.probe.artifact import PROBE_FORMAT, load_probe
from hashindex.search.engines import CodeIndex
from hashindex.search.ranking import hamming_search, search_embeddings
from hashindex.store.reader import open_embeddings
from hashindex.store.schema import SCHEMA_VERSION

GOLDEN = Path(__file__).resolve().parent / "golden"
SETS = sorted(p for p in GOLDEN.iterdir() if (p / "expected.json").is_file())


def _hex(codes) -> list[str]:
    return [c.tobytes().hex() for c in codes]


def _contents(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_the_old_sets_are_kept():
    assert "schema1-index2-probe1" in [p.name for p in SETS]  # index format 2: still loads


def test_there_is_a_golden_set_of_the_current_formats():
    current = {"schema_version": SCHEMA_VERSION, "index_format": INDEX_FORMAT, "probe_format": PROBE_FORMAT}
    have = [json.loads((p / "expected.json").read_text())["versions"] for p in SETS]
    assert current in have, (
        f"no golden set for {current}: run `python tests/golden/make_golden.py` and commit it (keep the old sets)"
    )
    assert sum(f.stat().st_size for p in SETS for f in p.rglob("*") if f.is_file()) < 100_000 * len(SETS)


@pytest.mark.parametrize("golden", SETS, ids=[p.name for p in SETS])
def test_golden_embeddings_still_read_the_same(golden):
    exp = json.loads((golden / "expected.json").read_text())
    emb = open_embeddings(golden / "embeddings.h5", verify=True)
    assert (emb.n, emb.dim, emb.num_views) == (exp["n"], exp["dim"], 2)
    assert emb.names() == exp["names"] and "café" in " ".join(emb.names())
    assert emb.failures() == exp["failures"]
    assert emb.labels().shape == (exp["n"], 3) and emb.label_names == ["zero", "one", "two"]
    assert emb.views().shape == (exp["n"], 2, exp["dim"]) and np.isfinite(emb.views()).all()
    assert emb.backbone.model == "golden-synthetic"
    assert int(emb.attrs["schema_version"]) == exp["versions"]["schema_version"]


@pytest.mark.parametrize("golden", SETS, ids=[p.name for p in SETS])
def test_golden_index_reproduces_recorded_results(golden):
    exp = json.loads((golden / "expected.json").read_text())
    before = _contents(golden)
    idx = load_index(golden / "index")  # verifies sha256 of every file and the manifest
    assert (idx.bits, idx.ntotal, idx.kind) == (exp["bits"], exp["n"], "flat")
    assert idx.manifest.format == exp["versions"]["index_format"]
    emb = open_embeddings(golden / "embeddings.h5")
    probe = load_probe(golden / "index" / "probe")
    assert _hex(probe.encode(emb.embeddings())) == exp["codes_hex"]  # the probe's weights and maths
    import faiss

    stored = faiss.vector_to_array(idx.faiss_index.xb).reshape(idx.ntotal, -1)
    assert _hex(stored) == exp["codes_hex"]  # the faiss file's contents
    assert _hex(idx.codes()) == exp["codes_hex"]
    q = np.asarray(exp["queries"], np.float32)
    assert _hex(idx.probe.encode(q)) == exp["query_codes_hex"]
    qcodes = np.frombuffer(b"".join(bytes.fromhex(h) for h in exp["query_codes_hex"]), np.uint8).reshape(len(q), -1)
    np.testing.assert_array_equal(qcodes, idx.probe.encode(q))

    # The public API: open_index (verified, as users open it) and search by float embeddings.
    ix = hashindex.open_index(golden / "index")
    assert (ix.bits, len(ix), ix.kind) == (exp["bits"], exp["n"], "flat")
    res = ix.search(q, k=exp["k"], device="cpu")
    np.testing.assert_array_equal(res.ids, exp["ids"])
    np.testing.assert_array_equal(res.distances, exp["distances"])
    assert [h.names for h in res] == [[exp["names"][i] for i in row] for row in exp["ids"]]

    # The snapshot (rows, which are ids in a fresh build) and its engine, by embeddings and by codes.
    snap = ix.snapshot
    r = snap.search(q, exp["k"])
    np.testing.assert_array_equal(snap.ids[r.I], exp["ids"])
    np.testing.assert_array_equal(r.D, exp["distances"])
    d2, i2 = hamming_search(snap.index, qcodes, exp["k"])
    np.testing.assert_array_equal(i2, exp["ids"])
    np.testing.assert_array_equal(d2, exp["distances"])

    # The codes held in memory (the engine rebuilt from them), searched by embeddings.
    ci = CodeIndex.from_codes(idx.codes(), IndexConfig("flat"), probe=idx.probe)
    d3, i3 = search_embeddings(ci, q, exp["k"])
    np.testing.assert_array_equal(i3, exp["ids"])
    np.testing.assert_array_equal(d3, exp["distances"])

    items = idx.items()
    assert items["names"] == exp["names"] and items["label_names"] == ["zero", "one", "two"]
    assert _contents(golden) == before  # reading never writes into the folder
