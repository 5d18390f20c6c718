"""The command line through click's CliRunner, on real Fashion-MNIST embeddings."""

import json

import numpy as np
import pytest
from helpers import run_cli as run
from PIL import Image

import hashindex
from hashindex.core.codes import hamming
from hashindex.core.errors import InputError
from hashindex.index.load import load_index
from hashindex.store.reader import open_embeddings


@pytest.fixture(scope="module")
def built(fmnist, tmp_path_factory):
    """A CroVCA probe and flat index over the session's Fashion-MNIST database, via the CLI."""
    db, q = fmnist
    d = tmp_path_factory.mktemp("cli")
    run("fit-probe", db.path, d / "probe", "--bits", 32, "--epochs", 2)
    run("build", db.path, d / "probe", d / "index")
    return d


def test_help_explains_every_command():
    r = run("--help")
    for cmd in ("embed", "fit-probe", "build", "query", "evaluate"):
        assert cmd in r.output
        sub = run(cmd, "--help")
        assert "Usage" in sub.output and "--" in sub.output


def test_python_dash_m_works():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "hashindex", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "hashindex" in r.stdout


def test_embed_folder_and_query_images(tmp_path, built):
    from skimage import data

    for cls, img in (("cat", data.chelsea()), ("cup", data.coffee())):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "imgs" / cls / f"{cls}.jpg")
    r = run("embed", tmp_path / "imgs", tmp_path / "e.h5", "--image-size", 64)
    assert r.output == ""  # -q: no chatter (the file is checked below)
    e = open_embeddings(tmp_path / "e.h5")
    assert e.label_names == ["cat", "cup"] and e.names() == ["cat/cat.jpg", "cup/cup.jpg"]
    r = run("query", built / "index", tmp_path / "imgs" / "cat" / "cat.jpg", "-k", 3, "--json")
    res = json.loads(r.output)
    assert res[0]["query"].endswith("cat.jpg") and [h["rank"] for h in res[0]["results"]] == [1, 2, 3]
    dists = [h["distance"] for h in res[0]["results"]]
    assert dists == sorted(dists)


def test_interpolation_is_recorded_and_reproduced_at_query_time(tmp_path):
    from skimage import data

    from hashindex.backbone.features import embed_images
    from hashindex.backbone.model import backbone_from_spec

    (tmp_path / "imgs").mkdir()
    Image.fromarray(data.astronaut()[::8, ::8]).save(tmp_path / "imgs" / "a.png")  # 64 px, upsampled
    for interp in ("bicubic", "bilinear"):
        run("embed", tmp_path / "imgs", tmp_path / f"{interp}.h5", "--image-size", 96, "--interpolation", interp)
    bic, bil = (open_embeddings(tmp_path / f"{i}.h5") for i in ("bicubic", "bilinear"))
    assert bil.backbone.interpolation == "bilinear" and bic.backbone.interpolation == "bicubic"
    assert not np.allclose(bic.embeddings(), bil.embeddings(), atol=1e-3)
    # query re-creates the recorded preprocessing: same features as the file's
    bb = backbone_from_spec(bil.backbone, device="cpu")
    want = embed_images(bb, [np.asarray(Image.open(tmp_path / "imgs" / "a.png").convert("RGB"))])
    np.testing.assert_allclose(bil.embeddings(), want, atol=1e-4)
    r = run("embed", tmp_path / "imgs", tmp_path / "x.h5", "--interpolation", "lanczos", ok=False)
    assert r.exit_code == 2 and "lanczos" in r.output


def test_query_embeddings_matches_reference(built, fmnist):
    _, q = fmnist
    r = run("query", built / "index", "--embeddings", q.path, "--limit", 5, "-k", 7, "--json")
    res = json.loads(r.output)
    idx = load_index(built / "index")
    qc = idx.probe.encode(q.embeddings(slice(0, 5)))
    db_codes = idx.probe.encode(open_embeddings(idx.manifest.embeddings["path"]).embeddings())
    ref = hamming(qc, db_codes)
    for row, qr in enumerate(res):
        ids = [h["id"] for h in qr["results"]]
        want = sorted(range(ref.shape[1]), key=lambda j: (ref[row, j], j))[:7]
        assert ids == want
        assert [h["distance"] for h in qr["results"]] == [int(ref[row, j]) for j in want]
        assert qr["results"][0]["name"].startswith("train/") and qr["results"][0]["label"]
    text = run("query", built / "index", "--embeddings", q.path, "--limit", 1, "-k", 2).output
    assert text.splitlines()[0] == "query\trank\tid\tname\tlabel\tdistance" and len(text.splitlines()) == 3


def test_query_no_verify_skips_only_the_hashing(built, fmnist, tmp_path):
    """A same-size change to the index file is refused by default (sha256) and searched with --no-verify;
    a change of size is refused either way."""
    import shutil

    from hashindex.index.manifest import INDEX_FILE

    _, q = fmnist
    d = tmp_path / "index"
    shutil.copytree(built / "index", d)
    args = ("query", d, "--embeddings", q.path, "--limit", 3, "-k", 5, "--json")
    clean = json.loads(run(*args).output)
    f = d / INDEX_FILE
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # the last item's code: the queries' top 5 do not hold it
    f.write_bytes(bytes(data))
    _err(run(*args, ok=False), 3, "sha256")
    assert json.loads(run(*args, "--no-verify").output) == clean
    f.write_bytes(bytes(data[:-1]))
    _err(run(*args, "--no-verify", ok=False), 3, INDEX_FILE)


def test_evaluate_json(built, fmnist):
    _, q = fmnist
    r = run("evaluate", built / "index", q.path, "--topk", 100, "--json")
    res = json.loads(r.output)
    assert res["topk"] == 100 and res["nq"] == q.n and res["bits"] == 32
    assert 0.3 < res["map"] <= 1 and 0.3 < res["float_map"] <= 1
    text = run("evaluate", built / "index", q.path, "--topk", 50).output
    assert "mAP@50" in text and "float cosine" in text


def _err(r, code, *words):
    assert r.exit_code == code, r.output
    line = r.output.strip()
    assert line.startswith("error:") and "\n" not in line and "Traceback" not in r.output, r.output
    for w in words:
        assert w in line, line


def test_errors_are_one_line_without_traceback(tmp_path, built, fmnist):
    db, q = fmnist
    _err(run("fit-probe", tmp_path / "missing.h5", tmp_path / "p", ok=False), 2, "does not exist")
    (tmp_path / "empty").mkdir()
    _err(run("embed", tmp_path / "empty", tmp_path / "x.h5", ok=False), 2, "no images")
    _err(run("fit-probe", db.path, tmp_path / "p", "--bits", 12, ok=False), 2, "multiple of 8")
    _err(run("fit-probe", q.path, tmp_path / "p", "--method", "itq", "--supervised", ok=False), 2, "crovca only")
    # -k is checked by the CLI's option (click's usage error names the flag), and by the library too
    r = run("query", built / "index", "--embeddings", q.path, "-k", 0, ok=False)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "--topk" in r.output and "0 is not in the range" in r.output, r.output
    with pytest.raises(InputError, match="k must be"):
        hashindex.open_index(built / "index").search(q.embeddings(slice(0, 1)), k=0)
    (tmp_path / "junk.h5").write_bytes(b"junk")
    _err(run("evaluate", built / "index", tmp_path / "junk.h5", ok=False), 3, "HDF5")
    _err(run("query", tmp_path, "--embeddings", q.path, ok=False), 2, "not an index folder")
    _err(run("query", tmp_path / "nowhere", "--embeddings", q.path, ok=False), 2, "not an index folder")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff")
    _err(run("query", built / "index", tmp_path / "bad.jpg", ok=False), 2, "bad.jpg")


def test_probe_for_other_dimension_and_index_with_other_bits(tmp_path, built, fmnist, rng):
    from helpers import write_embeddings

    db, _ = fmnist
    small = write_embeddings(
        tmp_path / "s.h5",
        rng.standard_normal((64, 16)).astype(np.float32),
        views=rng.standard_normal((64, 2, 16)).astype(np.float32),
    )
    run("fit-probe", small.path, tmp_path / "p16", "--bits", 16, "--epochs", 1)
    _err(run("build", db.path, tmp_path / "p16", tmp_path / "i", ok=False), 2, "16-d", "1280-d")
    # an index whose manifest claims another bit length than its probe and faiss file
    import shutil

    shutil.copytree(built / "index", tmp_path / "idx")
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    m["bits"] = 64
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    _err(run("query", tmp_path / "idx", "--embeddings", db.path, ok=False), 2, "32-bit", "64 bits")


def test_query_and_evaluate_with_reranking(built, fmnist):
    _, q = fmnist
    res = json.loads(
        run("query", built / "index", "--embeddings", q.path, "--limit", 3, "-k", 5, "--rerank", 4, "--json").output
    )
    for r in res:
        scores = [h["score"] for h in r["results"]]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    res = json.loads(
        run("query", built / "index", "--embeddings", q.path, "--limit", 3, "-k", 5, "--asymmetric", "--json").output
    )
    assert all([h["score"] for h in r["results"]] == sorted(h["score"] for h in r["results"]) for r in res)
    ham = json.loads(run("evaluate", built / "index", q.path, "--topk", 100, "--json", "--no-float").output)
    rr = json.loads(run("evaluate", built / "index", q.path, "--topk", 100, "--json", "--rerank", 4).output)
    assert rr["ranking"] == "rerank-float-4" and ham["ranking"] == "hamming"
    assert rr["map"] > ham["map"]  # float re-ranking recovers float quality
    assert abs(rr["map"] - rr["float_map"]) < 0.05


def test_bench_command(tmp_path, built, fmnist):
    db, q = fmnist
    r = run(
        "bench",
        db.path,
        q.path,
        "-o",
        tmp_path / "rep",
        "--methods",
        "lsh",
        "--bits",
        "16",
        "--topk",
        50,
        "--scales",
        2000,
        "--float-scale",
        2000,
        "--speed-queries",
        20,
        "--nprobes",
        "1",
        "--epochs",
        1,
    )
    assert "targets met" in r.output
    assert (tmp_path / "rep" / "report.md").exists()
    _err(run("bench", db.path, q.path, "-o", tmp_path / "r2", "--bits", "12", ok=False), 2, "multiple of 8")
