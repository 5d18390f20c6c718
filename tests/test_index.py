"""Index folders: build, manifest, verification on load, mismatches."""

import json

import h5py
import numpy as np
import pytest
from helpers import FAKE_SPEC, write_embeddings

from hashindex import build_index
from hashindex.core.config import FitConfig, IndexConfig
from hashindex.core.errors import InputError, IntegrityError, MismatchError
from hashindex.index.load import load_index
from hashindex.probe.fit import fit_probe
from hashindex.search.ranking import hamming_search, search_embeddings
from hashindex.store.reader import open_embeddings


@pytest.fixture
def probe_dir(tmp_path, clusters):
    fit_probe(clusters, FitConfig(method="itq", bits=32), progress=False).save(tmp_path / "probe")
    return tmp_path / "probe"


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_build_writes_verifiable_folder(tmp_path, clusters, probe_dir, kind):
    ix = build_index(clusters, probe_dir, tmp_path / "idx", IndexConfig(kind))
    idx = load_index(tmp_path / "idx")
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["bits"] == 32 and m["ntotal"] == clusters.n and m["index"]["kind"] == kind
    assert set(m["files"]) == {"index.faiss", "items.h5", "probe/probe.json", "probe/weights.safetensors"}
    assert m["backbone"]["model"] == "fake" and m["probe"]["method"] == "itq" and m["faiss_version"]
    items = idx.items()
    np.testing.assert_array_equal(items["labels"], clusters.labels())
    assert items["names"][:2] == ["item0", "item1"]
    # the index holds exactly the probe's codes: each item finds itself at distance 0
    x = clusters.embeddings()
    d, i = search_embeddings(ix.snapshot.index, x[:20], 1)
    assert (d[:, 0] == 0).all()
    codes = idx.probe.encode(x)
    np.testing.assert_array_equal(codes[i[:, 0]], codes[:20])
    if kind == "ivf":
        assert idx.faiss_index.nprobe == m["index"]["nprobe"] >= 1


def test_loading_refuses_modified_files(tmp_path, clusters, probe_dir):
    build_index(clusters, probe_dir, tmp_path / "idx", kind="flat")
    f = tmp_path / "idx" / "index.faiss"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_index(tmp_path / "idx")
    f.write_bytes(bytes(data[:-10]))
    with pytest.raises(IntegrityError, match="bytes"):
        load_index(tmp_path / "idx")
    f.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_index(tmp_path / "idx")
    with pytest.raises(InputError, match="not an index folder"):
        load_index(tmp_path)


def test_manifest_with_another_bit_length_is_refused(tmp_path, clusters, probe_dir):
    build_index(clusters, probe_dir, tmp_path / "idx", kind="flat")
    mf = tmp_path / "idx" / "manifest.json"
    m = json.loads(mf.read_text())
    m["bits"] = 64
    mf.write_text(json.dumps(m))
    with pytest.raises(MismatchError, match="32-bit codes but the manifest says 64"):
        load_index(tmp_path / "idx")


def test_build_refuses_mismatches(tmp_path, rng, clusters, probe_dir):
    other_dim = write_embeddings(tmp_path / "o.h5", rng.standard_normal((40, 16)).astype(np.float32))
    with pytest.raises(MismatchError, match="48-d"):
        build_index(other_dim, probe_dir, tmp_path / "x", kind="flat")
    other_model = write_embeddings(tmp_path / "m.h5", clusters.embeddings(), spec=dict(FAKE_SPEC, model="other"))
    with pytest.raises(MismatchError, match="other"):
        build_index(other_model, probe_dir, tmp_path / "y", kind="flat")
    build_index(clusters, probe_dir, tmp_path / "idx", kind="flat")
    with pytest.raises(InputError, match="not empty"):
        build_index(clusters, probe_dir, tmp_path / "idx", kind="flat")
    with pytest.raises(InputError, match="nlist"):
        build_index(clusters, probe_dir, tmp_path / "z", IndexConfig("ivf", nlist=10**6))


def test_store_roundtrip_and_partial_files(tmp_path, rng):
    x = rng.standard_normal((30, 8)).astype(np.float32)
    v = rng.standard_normal((30, 3, 8)).astype(np.float32)
    lab = rng.integers(0, 2, (30, 5)).astype(np.uint8)
    e = write_embeddings(tmp_path / "e.h5", x, v, lab)
    np.testing.assert_array_equal(e.embeddings(), x)
    np.testing.assert_array_equal(e.views(), v)
    np.testing.assert_array_equal(e.labels(), lab)
    assert e.n == 30 and e.dim == 8 and e.num_views == 3 and e.names()[29] == "item29"
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(InputError, match="incomplete"):
        open_embeddings(tmp_path / "e.h5")
    (tmp_path / "gone.h5.partial").write_bytes(b"")
    with pytest.raises(InputError, match="resume"):
        open_embeddings(tmp_path / "gone.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(IntegrityError):
        open_embeddings(tmp_path / "junk.h5")


def test_search_results_reach_every_item_once(tmp_path, clusters, probe_dir):
    ix = build_index(clusters, probe_dir, tmp_path / "idx", kind="flat")
    d, i = hamming_search(ix.snapshot.index, ix.snapshot.probe.encode(clusters.embeddings()[:3]), 10_000)
    assert i.shape == (3, clusters.n)
    assert all(len(set(r)) == clusters.n for r in i)
