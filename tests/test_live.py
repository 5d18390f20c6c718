"""Live index: stable ids across add/remove/compact/reload, results equal to a flat index built
directly from the remaining codes, snapshot isolation, crash safety under kill -9, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAKE_SPEC, write_embeddings

from hashindex import build_index
from hashindex.cli.main import cli
from hashindex.core.codes import hamming
from hashindex.core.config import FitConfig, IndexConfig
from hashindex.core.errors import InputError, IntegrityError
from hashindex.live.live_index import open_live
from hashindex.probe.fit import fit_probe
from hashindex.search.ranking import hamming_search, sort_results

D = 24


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """500 synthetic 24-d items with labels, LSH probes of 32 and 16 bits."""
    d = tmp_path_factory.mktemp("live")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, D)).astype(np.float32)
    emb = write_embeddings(d / "e.h5", x, labels=np.eye(5, dtype=np.uint8)[rng.integers(0, 5, 500)])
    for bits in (32, 16):
        fit_probe(emb, FitConfig(method="lsh", bits=bits), progress=False).save(d / f"p{bits}")
    return d, emb, x


def _build(base, tmp_path, kind):
    d, emb, _ = base
    bits = 16 if kind == "lookup" else 32
    build_index(
        emb,
        d / f"p{bits}",
        tmp_path / kind,
        IndexConfig(kind, nlist=8 if kind == "ivf" else None, nprobe=2 if kind == "ivf" else None),
    )
    return tmp_path / kind


def _reference(snap, template_ivf, queries, k):
    """A faiss index built directly from the snapshot's codes and ids (IVF: same quantizer)."""
    if template_ivf is not None:
        fi = faiss.deserialize_index_binary(faiss.serialize_index_binary(template_ivf))
        fi.reset()
        fi.nprobe = template_ivf.nprobe
    else:
        fi = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(snap.bits))
    fi.add_with_ids(snap.codes, snap.ids)
    d, i = fi.search(queries, min(k, snap.ntotal))
    return sort_results(d.astype(np.int32), i)


def _popcount_topk(snap, queries, k):
    dist = hamming(queries, snap.codes)
    out_d, out_i = [], []
    for row in dist:
        order = np.lexsort((snap.ids, row))[:k]
        out_d.append(row[order])
        out_i.append(snap.ids[order])
    return np.array(out_d), np.array(out_i)


@pytest.mark.parametrize("kind", ["flat", "ivf", "lookup", "mih"])
def test_ids_stable_and_results_equal_reference(base, tmp_path, kind):
    _, _, x = base
    rng = np.random.default_rng(2)
    path = _build(base, tmp_path, kind)
    live = open_live(path)
    template = live.snapshot.faiss_index if kind == "ivf" else None
    names = {int(i): str(n) for i, n in zip(live.snapshot.ids, live.snapshot.names)}
    codes_of = {int(i): c.tobytes() for i, c in zip(live.snapshot.ids, live.snapshot.codes)}

    new = live.add(rng.standard_normal((40, D)), [f"new{i}" for i in range(40)])
    assert new.tolist() == list(range(500, 540))
    live.remove([3, 7, 9, 505])
    new2 = live.add(x[:5] + 0.01, [f"dup{i}" for i in range(5)])  # near-duplicates: ties with 0..4
    assert new2.tolist() == list(range(540, 545))  # removed ids are never reused
    names.update({int(i): f"new{j}" for j, i in enumerate(new)})
    names.update({int(i): f"dup{j}" for j, i in enumerate(new2)})
    for snap_ in (live.snapshot,):
        for i, c in zip(snap_.ids, snap_.codes):
            codes_of.setdefault(int(i), c.tobytes())

    def check(snap):
        assert snap.ntotal == 541
        assert not {3, 7, 9, 505} & set(snap.ids.tolist())
        assert (np.diff(snap.ids) > 0).all()
        for i, n, c in zip(snap.ids, snap.names, snap.codes):
            assert names[int(i)] == n and codes_of[int(i)] == c.tobytes()
        q = snap.index.probe.encode(np.concatenate([x[:20], rng.standard_normal((10, D)).astype(np.float32)]))
        for k in (1, 10, 60):
            got_d, got_i = hamming_search(snap.index, q, k)
            ref_d, ref_i = _reference(snap, template, q, k)
            np.testing.assert_array_equal(got_i, ref_i)
            np.testing.assert_array_equal(got_d, ref_d)
            if kind != "ivf":  # exact kinds: equal to a NumPy popcount ranking, ties by id
                np_d, np_i = _popcount_topk(snap, q, k)
                np.testing.assert_array_equal(got_d, np_d)
                np.testing.assert_array_equal(got_i, np_i)

    check(live.snapshot)
    check(open_live(path).snapshot)  # reload replays the commits
    live.compact()
    assert live.state.commits == ()
    check(live.snapshot)
    reloaded = open_live(path)
    check(reloaded.snapshot)
    assert reloaded.add(x[:1], ["after-compact"]).tolist() == [545]
    assert reloaded.info()["added_since_fit"] == 46


def test_info_and_rerank_on_added_items(base, tmp_path):
    _, _, x = base
    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    assert live.info()["added_since_fit"] == 0
    ids = live.add(x[10:13] * -1, ["a", "b", "c"], labels=np.eye(5, dtype=np.uint8)[[1, 2, 3]])
    info = open_live(path).info()
    assert info["added_since_fit"] == 3 and info["ntotal"] == 503 and info["commits"] == 1 and info["next_id"] == 503
    snap = live.snapshot
    assert snap.item(int(ids[0]))["label"] == "1"  # its label (class 1; the file names no classes)
    for mode in ({"rerank": 3}, {"asymmetric": True}):
        d, rows, s = snap.search(-x[10:11], 5, **mode)
        assert snap.ids[rows[0, 0]] == ids[0]  # its own float embedding (kept in the commit) ranks it first
        d2, rows2, s2 = snap.search_id(int(ids[0]), 5, **mode)
        assert snap.ids[rows2[0, 0]] == ids[0] and d2[0, 0] == 0
    live.compact()
    snap = open_live(path).snapshot
    d, rows, s = snap.search(-x[10:11], 5, rerank=3)  # floats moved to the base
    assert snap.ids[rows[0, 0]] == ids[0]


def test_search_by_id_returns_itself_first_among_many_ties(base, tmp_path):
    path = _build(base, tmp_path, "lookup")
    live = open_live(path)
    code = live.snapshot.codes[0]
    dup_ids = live.add(np.repeat(base[2][:1], 30, axis=0), [f"d{i}" for i in range(30)])
    assert (live.snapshot.codes[-30:] == code).all()
    snap = live.snapshot
    d, rows, _ = snap.search_id(int(dup_ids[-1]), 5)
    assert snap.ids[rows[0, 0]] == dup_ids[-1] and d[0].tolist() == [0] * 5


def test_bad_writes_and_unknown_ids(base, tmp_path):
    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    with pytest.raises(InputError, match="unknown id 999"):
        live.remove([1, 999])
    with pytest.raises(InputError):
        live.add(np.full((1, D), np.nan), ["x"])
    with pytest.raises(InputError):
        live.add(np.zeros((2, D)), ["only-one"])
    with pytest.raises(InputError, match="no item named"):
        live.ids_of_names(["nope"])
    assert live.state.generation == 0 and open_live(path).snapshot.ntotal == 500


def _search_ids(snap, q, k):
    """The ids (not rows) of a snapshot's top-k."""
    return snap.ids[snap.search(q, k).I]


def test_snapshot_isolation_during_commits(base, tmp_path):
    """Searches running while commits land see the index before or after each one, never between."""
    _, _, x = base
    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    q = x[:4]
    # Each commit adds exact copies of the queries and removes the previous copies: a search that
    # saw half a commit would see zero or two copies of a query in its top results.
    expected = {}
    stop, seen, errors = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            snap = live.snapshot
            _, rows, _ = snap.search(q, 3)
            seen.append((snap.generation, snap.ids[rows]))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        prev = None
        expected[0] = _search_ids(live.snapshot, q, 3)
        for g in range(1, 9):
            if g % 2:
                prev = live.add(q, [f"copy{g}-{j}" for j in range(4)])
            else:
                live.remove(prev)
            expected[live.snapshot.generation] = _search_ids(live.snapshot, q, 3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) > 10
    for gen, ids in seen:
        np.testing.assert_array_equal(ids, expected[gen])
    assert errors == []


def test_unnamed_commit_ignored_and_tampering_detected(base, tmp_path):
    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    live.add(base[2][:2], ["a", "b"])
    stray = path / "commits" / "0000000002-add.npz"
    stray.write_bytes((path / "commits" / "0000000001-add.npz").read_bytes())  # as a killed writer leaves it
    again = open_live(path)
    assert again.snapshot.ntotal == 502 and again.snapshot.generation == 1
    assert again.add(base[2][:1], ["c"]).tolist() == [502]  # the writer replaces the unfinished file
    committed = path / "commits" / "0000000001-add.npz"
    raw = bytearray(committed.read_bytes())
    raw[-30] ^= 0xFF
    committed.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="sha256"):
        open_live(path)


def test_lock_refuses_a_second_writer(base, tmp_path):
    path = _build(base, tmp_path, "flat")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hashindex.core.durable import OutputLock; "
            "l = OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        live = open_live(path)
        live.lock_wait = 0.3
        with pytest.raises(InputError, match="gave up after waiting"):
            live.add(base[2][:1], ["x"])
        r = CliRunner().invoke(cli, ["remove", str(path), "--ids", "1", "--wait", "0.2"])
        assert r.exit_code == 2 and r.output.startswith("error:") and "lock" in r.output
    finally:
        holder.kill()
        holder.wait()
    assert open_live(path).remove([1]).tolist() == [1]


def test_cli_add_remove_compact_info(base, tmp_path):
    d, _, x = base
    path = _build(base, tmp_path, "flat")
    new = write_embeddings(tmp_path / "new.h5", -x[:6], names=[f"n{i}" for i in range(6)])
    r = CliRunner()
    res = r.invoke(cli, ["add", str(path), "--embeddings", str(new.path)])
    assert res.exit_code == 0, res.output
    assert "ids 500..505" in res.output
    res = r.invoke(cli, ["remove", str(path), "--ids", "3,7", "--ids", "9", "--names", "n1,n2"])
    assert res.exit_code == 0, res.output
    assert set(open_live(path).snapshot.ids.tolist()) == set(range(500)) - {3, 7, 9} | {500, 503, 504, 505}
    for bad in (["--ids", "3,x"], ["--ids", ","], []):
        res = r.invoke(cli, ["remove", str(path), *bad])
        assert res.exit_code == 2 and "Traceback" not in res.output
    res = r.invoke(cli, ["info", str(path), "--json"])
    info = json.loads(res.output)
    assert info["added_since_fit"] == 6 and info["commits"] == 2 and info["ntotal"] == 501
    assert r.invoke(cli, ["compact", str(path)]).exit_code == 0
    assert sorted(p.name for p in path.iterdir()) == [
        "extra_embeddings.npy",
        "index.faiss",
        "items.h5",
        "manifest.json",
        "probe",
    ]
    res = r.invoke(cli, ["query", str(path), "--embeddings", str(new.path), "-k", "1", "--rerank", "4", "--json"])
    assert res.exit_code == 0, res.output
    top = {q["query"]: q["results"][0]["id"] for q in json.loads(res.output)}
    assert (top["n0"], top["n3"], top["n4"], top["n5"]) == (500, 503, 504, 505)  # floats kept through compact
    other = write_embeddings(tmp_path / "other.h5", x[:2], spec={**FAKE_SPEC, "model": "other"})
    res = r.invoke(cli, ["add", str(path), "--embeddings", str(other.path)])
    assert res.exit_code == 2 and "error:" in res.output


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from hashindex.live.live_index import open_live
    path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    live = open_live(path)
    rng = np.random.default_rng(seed)
    print("ready", flush=True)
    b = 0
    while True:
        if mode == "add":
            live.add(rng.standard_normal((50, 24)), [f"s{seed}-b{b}-{j}" for j in range(50)])
        else:
            ids = live.snapshot.ids
            live.remove(ids[rng.choice(len(ids), 7, replace=False)])
        b += 1
    """
)


def _kill_and_check(path: Path, mode: str, seed: int, delay: float) -> None:
    before = open_live(path).snapshot
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), mode, str(seed)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        assert p.poll() is None, "the writer stopped before it was killed"  # killed mid-work, not dead already
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    live = open_live(path)  # loadable, verified
    snap = live.snapshot
    assert len(np.unique(snap.ids)) == snap.ntotal
    gained = snap.ntotal - before.ntotal
    assert gained % 50 == 0 if mode == "add" else (before.ntotal - snap.ntotal) % 7 == 0  # whole commits only
    if mode == "add":
        batches = {}
        for n in snap.names:
            if str(n).startswith(f"s{seed}-"):
                key = str(n).rsplit("-", 1)[0]
                batches[key] = batches.get(key, 0) + 1
        assert all(v == 50 for v in batches.values())
    assert set(before.ids.tolist()) >= set(snap.ids.tolist()) or mode == "add"
    nxt = live.add(np.zeros((1, 24), np.float32) + 0.5, ["after-kill"])  # the next writer goes on
    assert nxt[0] > snap.ids.max() and nxt[0] == live.state.next_id - 1


def test_kill9_during_add_and_remove(base, tmp_path):
    path = _build(base, tmp_path, "flat")
    _kill_and_check(path, "add", 0, 1.5)
    _kill_and_check(path, "remove", 1, 1.5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["add", "remove"])
def test_kill9_at_20_random_moments(base, tmp_path, mode):
    path = _build(base, tmp_path, "ivf")
    rng = np.random.default_rng(3)
    for trial in range(20):
        live = open_live(path)
        if mode == "remove" and live.snapshot.ntotal < 2000:  # enough items for 2 s of removals
            live.add(rng.standard_normal((2000, D)), [f"pad{trial}-{i}" for i in range(2000)])
        _kill_and_check(path, mode, trial, float(rng.uniform(0.2, 2.0)))


def test_evaluate_covers_added_items(base, tmp_path):
    """evaluate on a live index ranks added items too, and its float reference reads their floats."""
    from hashindex.measure.evaluate import evaluate
    from hashindex.search.exact import cosine_knn

    d, emb, x = base
    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    rng = np.random.default_rng(5)
    new_x = (rng.standard_normal((20, D)) * 3).astype(np.float32)
    new_labels = np.eye(5, dtype=np.uint8)[rng.integers(0, 5, 20)]
    live.add(new_x, [f"n{i}" for i in range(20)], labels=new_labels)
    live.remove([0, 1])
    q = write_embeddings(tmp_path / "q.h5", new_x[:10], labels=new_labels[:10])
    r = evaluate(open_live(path).snapshot, q, 5)
    assert r["ntotal"] == 518 and r["float_map"] is not None
    # the reference: float cosine over the remaining items' floats, labels in the same order
    snap = open_live(path).snapshot
    xb = np.concatenate([x[2:], new_x])
    yb = np.concatenate([emb.labels()[2:], new_labels])
    _, fids = cosine_knn(new_x[:10], xb, 5)
    from hashindex.measure.metrics import mean_average_precision, relevance

    assert r["float_map"] == pytest.approx(mean_average_precision(relevance(new_labels[:10], yb, fids)))
    assert snap.ntotal == len(xb)
    res = CliRunner().invoke(cli, ["evaluate", str(path), str(q.path), "--topk", "5", "--rerank", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ntotal"] == 518


def test_compaction_killed_between_its_renames(base, tmp_path, monkeypatch):
    import hashindex.live.compact as compact_mod

    path = _build(base, tmp_path, "ivf")
    live = open_live(path)
    live.add(base[2][:3], ["a", "b", "c"])
    live.remove([4])
    want = live.snapshot
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(src).endswith(".compact-new") and Path(dst) == path:
            raise KeyboardInterrupt("killed")  # the old base is aside, the new one not yet in place
        real_replace(src, dst)

    monkeypatch.setattr(compact_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        live.compact()
    monkeypatch.undo()
    assert not path.exists()
    reader = open_live(path)  # reads the complete new base meanwhile
    np.testing.assert_array_equal(reader.snapshot.ids, want.ids)
    assert reader.state.commits == ()
    assert reader.add(base[2][:1], ["d"]).tolist() == [503]  # the next writer finishes the swap
    assert path.is_dir() and sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".ivf")) == []
    np.testing.assert_array_equal(open_live(path).snapshot.ids, np.append(want.ids, 503))


_COMPACTOR = (
    "import sys\nfrom hashindex.live.live_index import open_live\nopen_live(sys.argv[1]).compact()\nprint('done')"
)


@pytest.mark.parametrize("step", ["compact-written", "compact-between-renames", "compact-swapped", "compact-cleaned"])
def test_compaction_killed_by_sigkill_at_each_step(base, tmp_path, step):
    """A compacting process killed (SIGKILL, at the library's crash points) at every step of the
    swap leaves an index readers open with the same items, codes, names and floats; the next
    writer finishes (or drops) the swap and goes on with the next id."""
    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    live.add(base[2][:3] * -1, ["a", "b", "c"])
    live.remove([4])
    want = live.snapshot
    want_names = want.name_list(np.arange(want.ntotal))
    env = {**os.environ, "HASHINDEX_CRASH_AT": step}
    r = subprocess.run(
        [sys.executable, "-c", _COMPACTOR, str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == -signal.SIGKILL and "done" not in r.stdout, (r.returncode, r.stderr[-2000:])
    reader = open_live(path)  # verified; during the swap, the complete folder beside it
    snap = reader.snapshot
    np.testing.assert_array_equal(snap.ids, want.ids)
    np.testing.assert_array_equal(np.asarray(snap.codes), np.asarray(want.codes))
    assert snap.name_list(np.arange(snap.ntotal)) == want_names
    np.testing.assert_array_equal(snap.embedding_of(501), want.embedding_of(501))
    assert len(reader.state.commits) == (2 if step == "compact-written" else 0)  # the new base is read once renamed
    assert reader.add(base[2][:1], ["d"]).tolist() == [503]  # the next writer finishes the swap
    assert path.is_dir() and [p.name for p in path.parent.iterdir() if p.name.startswith(".flat")] == []
    again = open_live(path).snapshot
    np.testing.assert_array_equal(again.ids, np.append(want.ids, 503))
    assert again.name_list(np.arange(again.ntotal)) == [*want_names, "d"]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_fresh_build_is_searched_mapped_and_reads_only_hit_names(base, tmp_path, kind):
    """A fresh build's snapshot neither copies its codes (flat: a view of the memory-mapped
    index file) nor loads its names: a search reads its hits' names from the items file, and a
    snapshot taken before a compaction swapped the folder keeps reading its own names and codes."""
    import h5py

    from hashindex.index.items import ItemNames

    path = _build(base, tmp_path, kind)
    snap = open_live(path).snapshot
    assert isinstance(snap.names, ItemNames) and snap.names._all is None
    if kind == "flat":
        assert not snap.codes.flags.owndata and not snap.codes.flags.writeable
    with h5py.File(path / "items.h5") as f:
        want = [s.decode() for s in f["names"][()]]
    d, rows, _ = snap.search(base[2][:3], 7)
    np.testing.assert_array_equal(snap.ids[rows], rows)  # a fresh build: ids are row positions
    hits = snap.hits(d, rows)
    assert [[h["id"] for h in q] for q in hits] == rows.tolist()
    names = [[h["name"] for h in q] for q in hits]
    assert names == [[want[i] for i in row] for row in rows]
    assert snap.names._all is None  # only the hits were read
    assert snap.item(499)["name"] == want[499] and snap.names[3] == want[3]
    codes_before = np.array(snap.codes)
    live = open_live(path)
    live.remove([0, 1])
    live.compact()  # the folder now holds a new base without items 0 and 1
    assert open_live(path).snapshot.name_list([0]) == [want[2]]  # positions of the new base: id 2 first
    assert snap.name_list([0, 1, 2]) == want[:3]  # the old snapshot reads the file it opened
    np.testing.assert_array_equal(np.array(snap.codes), codes_before)


def test_codes_of_a_released_snapshot_stay_valid(base, tmp_path):
    """A row taken from a snapshot whose faiss index was released (a later add replaced it)
    still reads the codes: the view keeps its index alive."""
    import gc

    path = _build(base, tmp_path, "flat")
    live = open_live(path)
    row = live.snapshot.codes[5]
    want = row.copy()
    live.add(base[2][:2], ["a", "b"])
    gc.collect()
    assert row.tolist() == want.tolist() and not row.flags.owndata
