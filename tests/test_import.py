"""`hashindex import`: .npy shards, .npz, parquet and HDF5 sources, sidecars, bad shards, queries."""

from __future__ import annotations

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from hashindex.cli.main import cli
from hashindex.core.config import FitConfig
from hashindex.core.errors import InputError
from hashindex.embedding.importer import ImportConfig, import_embeddings
from hashindex.probe.fit import fit_probe
from hashindex.probe.sampling import read_rows, sample_rows
from hashindex.store.reader import open_embeddings
from hashindex.store.resume import partial_path

N, D = 700, 24


@pytest.fixture
def x(rng):
    return rng.standard_normal((N, D)).astype(np.float32)


def _check(path, x, names=None):
    e = open_embeddings(path, verify=True)
    assert e.n == len(x) and e.dim == x.shape[1]
    np.testing.assert_array_equal(e.embeddings(), x)
    assert e.backbone.weights == "external"
    np.testing.assert_array_equal(e.source_index(), np.arange(len(x)))
    if names is not None:
        assert e.names() == names
    return e


def test_npy_shards_in_order_with_text_names(tmp_path, x):
    cuts = [0, 100, 101, 450, N]
    shards = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        shards.append(str(tmp_path / f"emb-{i}.npy"))
        np.save(shards[-1], x[a:b])
    names = [f"img/{i}.jpg" for i in range(N)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    s = import_embeddings(
        shards,
        tmp_path / "o.h5",
        ImportConfig(model_name="clip", names=str(tmp_path / "names.txt"), chunk=64),
        progress=False,
    )
    assert (s.rows, s.dim, s.shards) == (N, D, 4)
    e = _check(tmp_path / "o.h5", x, names)
    assert e.backbone.model == "clip" and e.labels() is None
    assert not partial_path(tmp_path / "o.h5").exists()


def test_npz_streamed_with_members_as_sidecars(tmp_path, x):
    y = np.arange(N) % 5
    np.savez_compressed(tmp_path / "e.npz", embeddings=x, names=np.array([f"n{i}" for i in range(N)]), y=y)
    import_embeddings(
        [str(tmp_path / "e.npz")],
        tmp_path / "o.h5",
        ImportConfig(names=f"{tmp_path}/e.npz:names", labels=f"{tmp_path}/e.npz:y", chunk=50),
        progress=False,
    )
    e = _check(tmp_path / "o.h5", x, [f"n{i}" for i in range(N)])
    np.testing.assert_array_equal(e.labels().argmax(1), y)
    assert e.label_names == [str(c) for c in range(5)]


def test_parquet_fixed_size_lists_with_name_and_label_columns(tmp_path, x):
    classes = np.array(["cat", "dog", "eel"])[np.arange(N) % 3]
    for i, (a, b) in enumerate(((0, 300), (300, N))):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].reshape(-1)), D)
        t = pa.table({"embedding": emb, "image_path": [f"p{j}" for j in range(a, b)], "cls": classes[a:b].tolist()})
        pq.write_table(t, tmp_path / f"part-{i}.parquet", row_group_size=128)
    srcs = [str(tmp_path / f"part-{i}.parquet") for i in range(2)]
    import_embeddings(
        srcs, tmp_path / "o.h5", ImportConfig(name_column="image_path", label_column="cls", chunk=100), progress=False
    )
    e = _check(tmp_path / "o.h5", x, [f"p{j}" for j in range(N)])
    assert e.label_names == ["cat", "dog", "eel"]
    np.testing.assert_array_equal(np.array(e.label_names)[e.labels().argmax(1)], classes)


def test_hdf5_dataset_and_cached_views(tmp_path, x, rng):
    v = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["/feat/x"] = x
        f["/feat/v"] = v
    cfg = ImportConfig(views_from=(f"{tmp_path}/src.h5:/feat/v",), chunk=128)
    import_embeddings([f"{tmp_path}/src.h5:/feat/x"], tmp_path / "o.h5", cfg, progress=False)
    e = _check(tmp_path / "o.h5", x)
    assert e.num_views == 1
    np.testing.assert_array_equal(e.view(0), v)


def _bad_width(tmp_path, x):
    np.save(tmp_path / "b.npy", x[:, :-1])


def _nan_row(tmp_path, x):
    bad = x.copy()
    bad[123, 4] = np.nan
    np.save(tmp_path / "b.npy", bad)


def _truncated(tmp_path, x):
    np.save(tmp_path / "b.npy", x)
    raw = (tmp_path / "b.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(raw[: len(raw) - 1000])


@pytest.mark.parametrize(
    ("make", "words"), [(_bad_width, "width 23"), (_nan_row, "row 123"), (_truncated, "truncated")]
)
def test_a_bad_shard_is_named_and_nothing_is_written(tmp_path, x, make, words):
    np.save(tmp_path / "a.npy", x)
    make(tmp_path, x)
    out = tmp_path / "o.h5"
    with pytest.raises(InputError) as e:
        import_embeddings(
            [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], out, ImportConfig(chunk=100), progress=False
        )
    assert "b.npy" in str(e.value) and words in str(e.value)
    assert not out.exists() and not partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy"]


def test_truncated_parquet_and_npz_are_named(tmp_path, x):
    pq.write_table(
        pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)}), tmp_path / "t.parquet"
    )
    np.savez(tmp_path / "t.npz", embeddings=x)
    for name in ("t.parquet", "t.npz"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
        with pytest.raises(InputError, match=name):
            import_embeddings([str(tmp_path / name)], tmp_path / "o.h5", progress=False)
    assert not (tmp_path / "o.h5").exists()


def test_mismatched_sidecar_is_refused(tmp_path, x):
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "names.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="2 rows"):
        import_embeddings(
            [str(tmp_path / "a.npy")],
            tmp_path / "o.h5",
            ImportConfig(names=str(tmp_path / "names.txt")),
            progress=False,
        )


def test_sampled_rows_are_read_streamed(tmp_path, x):
    np.save(tmp_path / "a.npy", x)
    import_embeddings([str(tmp_path / "a.npy")], tmp_path / "o.h5", progress=False)
    e = open_embeddings(tmp_path / "o.h5")
    rows = sample_rows(N, 150, seed=3)
    assert len(rows) == 150 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(read_rows(e, rows, chunk=64), x[rows])
    assert sample_rows(N, N, 0) is None


def test_imported_index_refuses_image_queries_and_answers_embedding_queries(tmp_path, x):
    np.save(tmp_path / "a.npy", x)
    run = CliRunner().invoke
    r = run(
        cli, ["-q", "import", str(tmp_path / "a.npy"), str(tmp_path / "db.h5"), "--model-name", "open_clip/ViT-B-32"]
    )
    assert r.exit_code == 0, r.output
    # CroVCA without cached views (feature-space views), on a sample of the rows.
    r = run(
        cli,
        [
            "-q",
            "fit-probe",
            str(tmp_path / "db.h5"),
            str(tmp_path / "p"),
            "--bits",
            "16",
            "--epochs",
            "1",
            "--sample",
            "500",
        ],
    )
    assert r.exit_code == 0, r.output
    assert run(cli, ["-q", "build", str(tmp_path / "db.h5"), str(tmp_path / "p"), str(tmp_path / "ix")]).exit_code == 0
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "q.png")
    r = run(cli, ["query", str(tmp_path / "ix"), str(tmp_path / "q.png")])
    assert (
        r.exit_code == 2
        and "imported embeddings" in r.output
        and "--embeddings" in r.output
        and "Traceback" not in r.output
    )
    r = run(
        cli,
        ["query", str(tmp_path / "ix"), "--embeddings", str(tmp_path / "db.h5"), "--limit", "3", "-k", "1", "--json"],
    )
    assert r.exit_code == 0, r.output
    import json

    hits = json.loads(r.output)
    assert [h["results"][0]["id"] for h in hits] == [0, 1, 2]  # each item finds itself first (distance 0)


def test_crovca_on_feature_views_is_seeded(tmp_path, x):
    np.save(tmp_path / "a.npy", x)
    import_embeddings([str(tmp_path / "a.npy")], tmp_path / "o.h5", progress=False)
    e = open_embeddings(tmp_path / "o.h5")
    a, b = (fit_probe(e, FitConfig(bits=16, epochs=1), progress=False) for _ in range(2))
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert a.meta["feature_views"]["dropout"] > 0 and a.meta["sample_rows"] == N


def _code_index(hi):
    """The codes of a loaded index folder with the engine of its kind over its own structures
    (faiss index, multi-index tables), as a snapshot of the folder searches them."""
    from hashindex.search.engines import CodeIndex, engine_for

    codes = hi.codes()
    return CodeIndex(
        codes, None, engine_for(hi.manifest.index, codes, hi.faiss_index, tables=hi.tables), hi.kind, hi.probe
    )


@pytest.mark.parametrize("kind", ["flat", "ivf", "lookup", "mih"])
def test_memory_mapped_index_answers_like_the_loaded_one(tmp_path, rng, kind):
    from helpers import write_embeddings

    import hashindex
    from hashindex.index.load import load_index
    from hashindex.search.ranking import ranked

    x = rng.standard_normal((3000, 16)).astype(np.float32)
    emb = write_embeddings(tmp_path / "db.h5", x, labels=np.eye(4, dtype=np.uint8)[np.arange(3000) % 4])
    hashindex.fit_probe(emb, tmp_path / "p", FitConfig(method="lsh", bits=16))
    hashindex.build_index(emb, tmp_path / "p", tmp_path / "ix", kind=kind, nlist=16 if kind == "ivf" else None)
    a, b = load_index(tmp_path / "ix"), load_index(tmp_path / "ix", mmap=True)
    assert a.kind == b.kind == kind
    if kind == "mih":
        assert b.tables is not None
    want = ranked(_code_index(a), x[:50], 10)
    got = ranked(_code_index(b), x[:50], 10)
    for g, w in zip(got[:2], want[:2]):
        np.testing.assert_array_equal(g, w)
    # open_index memory-maps its base: its snapshot's rows and the public search answer the same.
    ix = hashindex.open_index(tmp_path / "ix")
    snap = ix.snapshot
    for g, w in zip(snap.search(x[:50], 10)[:2], want[:2]):
        np.testing.assert_array_equal(g, w)
    res = ix.search(x[:50], k=10, device="cpu")
    np.testing.assert_array_equal(res.ids, snap.ids[want.I])
    np.testing.assert_array_equal(res.distances, want.D)
    assert b.items()["names"] == emb.names()
    np.testing.assert_array_equal(b.items()["labels"], emb.labels())


def test_cli_reports_a_bad_shard_on_one_line(tmp_path, x):
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x[:, :5])
    r = CliRunner().invoke(
        cli,
        ["-q", "import", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), str(tmp_path / "o.h5"), "--model-name", "m"],
    )
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.startswith("error: ") and "b.npy" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["-q", "embed", "fashion-mnist", str(tmp_path / "e.h5"), "--ray-actors", "2"])
    assert r.exit_code == 2 and "--ray-actors needs --ray" in r.output


def test_metadata_kept_in_the_file_reaches_filters_and_is_verified(tmp_path, x):
    """`import --metadata` stores the sidecar in /meta (under the file's hash); an index built
    from the file filters on it exactly as a popcount over the satisfying rows would."""
    import csv
    import json

    np.save(tmp_path / "x.npy", x)
    (tmp_path / "names.txt").write_text("\n".join(f"img{i}.jpg" for i in range(N)))
    with open(tmp_path / "meta.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "year", "camera"])
        for i in range(0, N, 2):  # odd rows have no metadata: no filter on a field admits them
            w.writerow([f"img{i}.jpg", 2000 + i % 20, "canon" if i % 4 else "nikon"])
    db, run = tmp_path / "e.h5", CliRunner().invoke
    args = ["--model-name", "m", "--names", str(tmp_path / "names.txt"), "--metadata", str(tmp_path / "meta.csv")]
    r = run(cli, ["-q", "import", str(tmp_path / "x.npy"), str(db), *args])
    assert r.exit_code == 0, r.output
    with h5py.File(db, "r") as f:
        assert sorted(f["meta"]) == ["camera", "year"]
        year = f["meta/year"][()]
    assert year[0] == 2000 and year[22] == 2002 and np.isnan(year[1])
    for a in (
        ["fit-probe", db, tmp_path / "p", "--bits", "32", "--epochs", "1"],
        ["build", db, tmp_path / "p", tmp_path / "ix"],
    ):
        r = run(cli, ["-q", *map(str, a)])
        assert r.exit_code == 0, r.output
    where = ["--where", "year>=2010", "--where", "camera=nikon"]
    r = run(
        cli, ["-q", "query", str(tmp_path / "ix"), "--embeddings", str(db), "--limit", "5", "-k", "4", "--json", *where]
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    rows = np.array([i for i in range(0, N, 4) if 2000 + i % 20 >= 2010])  # nikon: i % 4 == 0
    from hashindex import open_index

    bits = np.unpackbits(np.asarray(open_index(tmp_path / "ix").snapshot.codes), axis=1)
    for qi, hit in enumerate(got):
        d = (bits[rows] != bits[qi]).sum(1)
        want = sorted(zip(d, rows))[:4]
        assert [(h["distance"], h["id"]) for h in hit["results"]] == [(int(a), int(b)) for a, b in want]
    with h5py.File(db, "r+") as f:  # one changed value is caught by the file's check
        f["meta/year"][0] = 1999
    with pytest.raises(Exception, match="/meta does not match"):
        open_embeddings(db, verify=True)
