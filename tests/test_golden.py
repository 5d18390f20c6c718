"""Format stability: the committed golden artifacts (tests/golden/<versions>/, written by
tests/golden/make_golden.py) must load, verify, and give exactly the recorded codes and top-k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hashindex.index.load import load_index
from hashindex.index.manifest import INDEX_FORMAT
from hashindex.probe.artifact import PROBE_FORMAT, load_probe
from hashindex.search.ranking import hamming_search, search_embeddings
from hashindex.store.reader import open_embeddings
from hashindex.store.schema import SCHEMA_VERSION

GOLDEN = Path(__file__).resolve().parent / "golden"
SETS = sorted(p for p in GOLDEN.iterdir() if (p / "expected.json").is_file())


def _hex(codes) -> list[str]:
    return [c.tobytes().hex() for c in codes]


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
    idx = load_index(golden / "index")  # verifies sha256 of every file and the manifest
    assert (idx.bits, idx.ntotal, idx.kind) == (exp["bits"], exp["n"], "flat")
    assert idx.manifest.format == exp["versions"]["index_format"]
    emb = open_embeddings(golden / "embeddings.h5")
    probe = load_probe(golden / "index" / "probe")
    assert _hex(probe.encode(emb.embeddings())) == exp["codes_hex"]  # the probe's weights and maths
    import faiss

    stored = faiss.vector_to_array(idx.faiss_index.xb).reshape(idx.ntotal, -1)
    assert _hex(stored) == exp["codes_hex"]  # the faiss file's contents
    q = np.asarray(exp["queries"], np.float32)
    assert _hex(idx.probe.encode(q)) == exp["query_codes_hex"]
    d, i = search_embeddings(idx, q, exp["k"])
    np.testing.assert_array_equal(i, exp["ids"])
    np.testing.assert_array_equal(d, exp["distances"])
    codes = np.array([bytes.fromhex(h) for h in exp["query_codes_hex"]])
    d2, i2 = hamming_search(idx, np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), -1), exp["k"])
    np.testing.assert_array_equal(i2, exp["ids"])
    items = idx.items()
    assert items["names"] == exp["names"] and items["label_names"] == ["zero", "one", "two"]
