"""The public API: one `Index` that the CLI, the service and Python users share, with the same
results (against a NumPy popcount reference) before and after additions and removals; an index
straight from arrays equal to the CLI's; the README's Python section runs as written; a fresh
interpreter searches by PIL image and array without importing torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from helpers import write_embeddings

import hashindex
from hashindex.cli.main import cli
from hashindex.core.codes import hamming
from hashindex.serve.app import create_app

REPO = Path(__file__).resolve().parents[1]


def reference(snap, q_codes, k):
    """Top-k ids and distances by a NumPy popcount over the snapshot's codes, ties by id."""
    d = hamming(q_codes, np.asarray(snap.codes))
    order = np.lexsort((np.broadcast_to(snap.ids, d.shape), d), axis=1)[:, :k]
    return snap.ids[order], np.take_along_axis(d, order, 1)


@pytest.fixture(params=["flat", "mih"])
def index(request, tmp_path, rng):
    n, dim = 1500, 32
    centres = rng.standard_normal((12, dim)) * 2
    x = (centres[rng.integers(0, 12, n)] + rng.standard_normal((n, dim))).astype(np.float32)
    views = (x[:, None] + 0.3 * rng.standard_normal((n, 2, dim))).astype(np.float32)
    write_embeddings(tmp_path / "db.h5", x, views, np.eye(4, dtype=np.uint8)[np.arange(n) % 4])
    write_embeddings(tmp_path / "q.h5", x[:20] + 0.05, labels=np.eye(4, dtype=np.uint8)[np.arange(20) % 4])
    hashindex.fit_probe(tmp_path / "db.h5", tmp_path / "probe", bits=64, epochs=2)
    hashindex.build_index(tmp_path / "db.h5", tmp_path / "probe", tmp_path / "index", kind=request.param)
    return tmp_path, x


def _three_ways(tmp, client, k):
    """``(ids, distances)`` of the 20 queries by the Python API, the CLI and the service."""
    q = hashindex.open_embeddings(tmp / "q.h5").embeddings()
    py = hashindex.open_index(tmp / "index").search(q, k)
    r = CliRunner().invoke(
        cli, ["-q", "query", str(tmp / "index"), "--embeddings", str(tmp / "q.h5"), "-k", str(k), "--json"]
    )
    assert r.exit_code == 0, r.output
    by_cli = json.loads(r.output)
    http = [client.post("/search", json={"embedding": row.tolist(), "k": k}).json()["results"] for row in q]
    out = [(py.ids, py.distances)]
    out.append(
        (
            np.array([[h["id"] for h in rec["results"]] for rec in by_cli]),
            np.array([[h["distance"] for h in rec["results"]] for rec in by_cli]),
        )
    )
    out.append(
        (
            np.array([[h["id"] for h in hits] for hits in http]),
            np.array([[h["distance"] for h in hits] for hits in http]),
        )
    )
    return q, out


def test_cli_service_and_python_agree_with_the_reference_after_edits(index):
    tmp, x = index
    app = create_app(tmp / "index")
    with TestClient(app) as client:
        for step in ("built", "added", "removed"):
            if step == "added":
                hashindex.open_index(tmp / "index").add(x[:30] + 0.01, names=[f"n{i}" for i in range(30)])
            if step == "removed":
                r = CliRunner().invoke(cli, ["-q", "remove", str(tmp / "index"), "--ids", "0,1,2,1500,1501"])
                assert r.exit_code == 0, r.output
            ix = hashindex.open_index(tmp / "index")
            deadline = time.monotonic() + 30  # the service follows other processes' commits
            while client.get("/health").json()["generation"] != ix.info()["generation"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            q, ways = _three_ways(tmp, client, 15)
            want_ids, want_d = reference(ix.snapshot, ix.snapshot.probe.encode(q), 15)
            for ids, d in ways:
                assert np.array_equal(d, want_d), step
                assert np.array_equal(ids, want_ids), step
        assert 0 not in ways[0][0] and 1500 not in ways[0][0]


def test_an_index_from_arrays_equals_the_cli_build(tmp_path, rng):
    x = rng.standard_normal((700, 24)).astype(np.float32)
    labels = np.arange(700) % 5
    ix = hashindex.Index.from_embeddings(x, tmp_path / "arrays", labels=labels, bits=32, epochs=2, seed=3)
    assert ix.path == (tmp_path / "arrays" / "index").resolve()
    folder = tmp_path / "arrays"
    for args in (
        ["fit-probe", folder / "embeddings.h5", tmp_path / "probe2", "--bits", "32", "--epochs", "2", "--seed", "3"],
        ["build", folder / "embeddings.h5", folder / "probe", tmp_path / "cli-index", "--index", ix.kind],
    ):
        r = CliRunner().invoke(cli, ["-q", *map(str, args)])
        assert r.exit_code == 0, r.output
    cli_ix = hashindex.open_index(tmp_path / "cli-index")
    assert np.array_equal(np.asarray(cli_ix.snapshot.codes), np.asarray(ix.snapshot.codes))
    assert np.array_equal(cli_ix.snapshot.ids, ix.snapshot.ids)
    refit = hashindex.build_index(folder / "embeddings.h5", tmp_path / "probe2", tmp_path / "refit-index", kind="flat")
    assert np.array_equal(np.asarray(refit.snapshot.codes), np.asarray(ix.snapshot.codes))  # same seed, same codes
    assert ix.search(x[:3], k=1).ids.ravel().tolist() == [0, 1, 2]
    assert [h.labels[0] for h in ix.search(x[:3], k=1)] == ["0", "1", "2"]


def _python_section() -> str:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of Fashion-MNIST PNGs in class folders (``photos/Bag/3.png`` among them) and a
    few more for ``add``, as the README's Python section expects them."""
    from PIL import Image

    from hashindex.embedding.sources import open_source

    d = tmp_path_factory.mktemp("readme")
    src = open_source("fashion-mnist", split="train", limit=120)  # the section embeds them twice
    for i in range(120):
        c = src.label_names[int(src.labels[i].argmax())].replace("/", "-")
        folder = d / ("more_photos" if i >= 108 else f"photos/{c}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(src.load(i)).resize((64, 64)).save(folder / f"{i}.png")
    (d / "photos" / "Bag").mkdir(exist_ok=True)
    Image.fromarray(src.load(3)).resize((64, 64)).save(d / "photos" / "Bag" / "3.png")
    return d


def test_the_readme_python_section_runs(photos, onnx_cache):
    code = _python_section()
    env = dict(os.environ, HASHINDEX_CACHE=onnx_cache)
    r = subprocess.run([sys.executable, "-c", code], cwd=photos, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Index(" in r.stdout and "'tf_efficientnet_lite0'" in r.stdout


FRESH = """
import sys, numpy as np
from PIL import Image
import hashindex
assert "torch" not in sys.modules and "faiss" not in sys.modules
ix = hashindex.open_index(sys.argv[1])
assert "torch" not in sys.modules
im = Image.open(sys.argv[2])
a = ix.search([im], k=3)
b = ix.search(np.asarray(im.convert("RGB")), k=3)
c = ix.search(ix.snapshot.base.probe.tensors["net.0.weight"][:2].astype(np.float32), k=3)
assert (a.ids == b.ids).all() and a.distances[0, 0] == 0, (a.ids, a.distances)
print(len(repr(ix)), repr(ix), "torch" in sys.modules)
"""


def test_a_fresh_interpreter_searches_images_without_torch(photos, onnx_cache):
    out = photos / "out"
    if not (out / "index").exists():  # made by the README test when it ran first
        hashindex.index_images(photos / "photos", out, fit_config=hashindex.FitConfig(epochs=2))
    env = dict(os.environ, HASHINDEX_CACHE=onnx_cache)
    r = subprocess.run(
        [sys.executable, "-c", FRESH, str(out), str(photos / "photos" / "Bag" / "3.png")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    length, *_, torch_loaded = r.stdout.split()
    assert int(length) < 300 and torch_loaded == "False", r.stdout
