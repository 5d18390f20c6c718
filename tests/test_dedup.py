"""Near-duplicate detection: the exact Hamming range self-join against a brute-force NumPy
popcount, leader grouping (a chain of small edits is not one group), the CLI's groups, CSV and
removal list followed by ``hashindex remove --ids-from``, ``dedup --query``, and dedup after
``add`` and ``remove``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import run_cli, write_embeddings

import hashindex
from hashindex.core.config import DedupConfig, IndexConfig
from hashindex.dedup.find import candidate_pairs, leader_groups
from hashindex.index.mih import MIHTables
from hashindex.search.ranges import range_tables, self_join, within

POP8 = np.array([bin(v).count("1") for v in range(256)], np.uint8)


def brute_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of every row of ``a`` to every row of ``b`` (packed uint8 codes), by a
    byte popcount table: the reference, sharing no code with the library."""
    return POP8[a[:, None, :] ^ b[None, :, :]].astype(np.int32).sum(-1)


def brute_pairs(codes: np.ndarray, radius: int):
    """Every pair i < j within ``radius``, ordered by (i, j): ``(i, j, distance)``."""
    parts = []
    for s in range(0, len(codes), 256):
        d = brute_distances(codes[s : s + 256], codes)
        i, j = np.nonzero(d <= radius)
        keep = j > i + s
        parts.append((i[keep] + s, j[keep], d[i[keep], j[keep]]))
    return tuple(np.concatenate(x) for x in zip(*parts))


def planted_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Codes with neighbourhoods at every distance: around 24 centres, each bit flipped with
    probability 1/8; then exact repeats and copies with a few bits flipped."""
    nb = bits // 8
    centres = rng.integers(0, 256, (24, nb), dtype=np.uint8)
    f = rng.integers(0, 256, (3, n, nb), dtype=np.uint8)
    codes = centres[rng.integers(0, 24, n)] ^ (f[0] & f[1] & f[2])
    k = n // 10
    src, dst = rng.choice(n, k, replace=False), rng.choice(n, 2 * k, replace=False)
    codes[dst[:k]] = codes[src]  # exact repeats
    flips = np.zeros((k, bits), bool)
    for t in range(k):
        flips[t, rng.choice(bits, int(rng.integers(1, 6)), replace=False)] = True
    codes[dst[k:]] = codes[src] ^ np.packbits(flips, axis=1)
    return codes


@pytest.mark.parametrize(
    "bits,radius",
    [(16, 0), (16, 3), (24, 4), (32, 5), (64, 0), (64, 4), (64, 8), (64, 13), (72, 9), (128, 16), (256, 32)],
)
def test_self_join_equals_bruteforce(bits, radius):
    rng = np.random.default_rng(bits * 100 + radius)
    codes = planted_codes(3000 if bits <= 128 else 1500, bits, rng)
    want = brute_pairs(codes, radius)
    assert len(want[0]) > 0
    tables = MIHTables.build(codes, range_tables(bits, len(codes), radius))
    got = self_join(tables, codes, radius)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # with other numbers of tables (each probed to its own substring radii): the same pairs
    for m in {max(1, tables.m - 1), min(bits, tables.m + 1), min(bits, tables.m + 3)}:
        if -(-bits // m) > 24:
            continue
        for g, w in zip(self_join(MIHTables.build(codes, m), codes, radius), want):
            np.testing.assert_array_equal(g, w)


def test_self_join_crowded_unit_is_asked_again(monkeypatch):
    """A unit whose pairs overflow the join's buffer is joined again with room for all of them."""
    import hashindex.search.ranges as ranges

    rng = np.random.default_rng(7)
    codes = planted_codes(1500, 64, rng)
    codes[:300] = codes[0]  # 300 identical codes: 44,850 pairs in one bucket of every table
    calls = []
    real = ranges._join_units

    def counted(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(ranges, "_join_units", counted)
    tables = MIHTables.build(codes, 4)
    for g, w in zip(self_join(tables, codes, 6), brute_pairs(codes, 6)):
        np.testing.assert_array_equal(g, w)
    assert max(calls) >= 300 * 299 // 2 > calls[0]  # asked again with room for the crowded unit


@pytest.mark.parametrize("bits,radius", [(32, 4), (64, 8), (128, 12)])
def test_range_queries_equal_bruteforce(bits, radius):
    rng = np.random.default_rng(7)
    codes = planted_codes(2000, bits, rng)
    q = np.concatenate(
        [
            codes[rng.choice(len(codes), 50)] ^ rng.integers(0, 2, (50, bits // 8), dtype=np.uint8),
            rng.integers(0, 256, (10, bits // 8), dtype=np.uint8),
        ]
    )
    tables = MIHTables.build(codes, range_tables(bits, len(codes), radius))
    qi, rows, d = within(tables, q, radius)
    ref = brute_distances(q, codes)
    wi, wr = np.nonzero(ref <= radius)
    np.testing.assert_array_equal(qi, wi)
    np.testing.assert_array_equal(rows, wr)
    np.testing.assert_array_equal(d, ref[wi, wr])


# -- indexes of synthetic embeddings ----------------------------------------------------------


def pictures(rng, n: int, dim: int = 32) -> np.ndarray:
    """``n`` unrelated embeddings (random directions: cosine about 0 between them)."""
    return rng.standard_normal((n, dim)).astype(np.float32)


def edited(x: np.ndarray, rng, noise: float = 0.01) -> np.ndarray:
    """A near-duplicate of each row: cosine about 1 - noise**2 / 2."""
    return (
        x + noise * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(x.shape[1]) * rng.standard_normal(x.shape)
    ).astype(np.float32)


def make_index(path, x, names, bits=64, kind="flat"):
    return hashindex.Index.from_embeddings(x, path, names=names, method="lsh", bits=bits, index=IndexConfig(kind))


def group_names(records) -> set[frozenset]:
    return {frozenset(it["name"] for it in g["items"]) for g in records}


@pytest.fixture
def planted(tmp_path):
    """40 unrelated pictures, 10 of which have two near-duplicate copies (ids 40..59)."""
    rng = np.random.default_rng(3)
    base = pictures(rng, 40)
    x = np.concatenate([base, edited(base[:10], rng), edited(base[:10], rng)])
    names = [f"p{i}" for i in range(40)] + [f"p{i}_a" for i in range(10)] + [f"p{i}_b" for i in range(10)]
    truth = {frozenset({f"p{i}", f"p{i}_a", f"p{i}_b"}) for i in range(10)}
    return make_index(tmp_path / "ix", x, names), x, names, truth


@pytest.mark.parametrize("kind", ["flat", "mih"])
def test_candidates_of_an_index_equal_bruteforce(tmp_path, kind):
    """The pairs dedup starts from, through an index's snapshot (a mih index lends its own tables
    when they suit the radius), equal the brute force over the index's codes."""
    rng = np.random.default_rng(11)
    base = pictures(rng, 1500)
    x = np.concatenate([base, edited(base[:500], rng, 0.2)])
    ix = make_index(tmp_path / kind, x, None, kind=kind)
    snap = ix.snapshot
    codes = np.asarray(snap.codes)
    for r in (0, 4, 8, 16):
        got = candidate_pairs(snap, r)
        for g, w in zip(got, brute_pairs(codes, r)):
            np.testing.assert_array_equal(g, w)
    # after an edit that keeps the count (3 removed, 3 added): the snapshot's codes, not the base's
    ix.remove([0, 1, 2])
    ix.add(edited(base[10:13], rng, 0.05))
    snap = ix.snapshot
    assert snap.ntotal == len(x)
    for r in (0, 8):
        for g, w in zip(candidate_pairs(snap, r), brute_pairs(np.asarray(snap.codes), r)):
            np.testing.assert_array_equal(g, w)


def test_groups_csv_remove_list_then_remove(tmp_path, planted):
    ix, x, names, truth = planted
    g, c, rm = tmp_path / "g.json", tmp_path / "g.csv", tmp_path / "rm.txt"
    run_cli("dedup", ix.path, "-o", g, "--csv", c, "--remove-list", rm)
    doc = json.loads(g.read_text())
    assert doc["bits"] == 64 and doc["keep"] == "first"
    assert group_names(doc["groups"]) == truth
    for rec in doc["groups"]:
        ids = [it["id"] for it in rec["items"]]
        assert rec["keep"] == min(ids) and sorted(rec["remove"]) == sorted(set(ids) - {rec["keep"]})
        assert [it["keep"] for it in rec["items"]].count(True) == 1
        for it in rec["items"]:
            assert it["name"] == names[it["id"]]
            # confirmed by cosine (these items have no image files for their pixels)
            assert it["cosine"] is not None and it["cosine"] >= doc["min_cosine"]
            assert it["pixels"] == (1.0 if it["keep"] else None)
    removed = [int(v) for v in rm.read_text().split()]
    assert sorted(removed) == sorted(i for rec in doc["groups"] for i in rec["remove"])
    assert sorted(removed) == list(range(40, 60))  # the copies; the originals (first ids) stay
    with open(c, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and {r["name"] for r in rows} == set().union(*truth)
    assert sorted(int(r["id"]) for r in rows if r["keep"] == "0") == sorted(removed)
    # --keep last: the other end of each group stays
    run_cli("dedup", ix.path, "--keep", "last", "--remove-list", tmp_path / "rm_last.txt")
    last = sorted(int(v) for v in (tmp_path / "rm_last.txt").read_text().split())
    assert last == sorted(list(range(10)) + list(range(40, 50)))

    run_cli("remove", ix.path, "--ids-from", rm)
    ix.refresh()
    assert len(ix) == 40
    run_cli("dedup", ix.path, "-o", tmp_path / "g2.json", "--remove-list", tmp_path / "rm2.txt")
    assert json.loads((tmp_path / "g2.json").read_text())["groups"] == []
    assert (tmp_path / "rm2.txt").read_text().split() == []
    assert ix.duplicates() == []


def test_pair_limit_stops_a_large_radius(tmp_path, planted):
    """--max-pairs: a radius that finds more candidate pairs than allowed stops with an error that
    names the radius, and writes nothing; within the limit the groups are the same as without."""
    ix, x, names, truth = planted
    pairs = len(candidate_pairs(ix.snapshot, 32)[0])
    r = run_cli("dedup", ix.path, "--radius-bits", 32, "--max-pairs", pairs - 1, "-o", tmp_path / "g.json", ok=False)
    assert r.exit_code != 0 and "use a smaller --radius" in r.output and not (tmp_path / "g.json").exists()
    run_cli("dedup", ix.path, "--max-pairs", pairs, "-o", tmp_path / "g.json")
    assert group_names(json.loads((tmp_path / "g.json").read_text())["groups"]) == truth


def test_quiet_dedup_prints_nothing_but_results(tmp_path, planted):
    """``-q``: no chatter (README: no "wrote ..." lines; errors and warnings about the data still
    show), on stderr either; the output files are written, --json goes to stdout alone."""
    ix, x, names, truth = planted
    r = run_cli("dedup", ix.path, "-o", tmp_path / "g.json")
    assert r.stdout == "" and r.stderr == ""
    r = run_cli("dedup", ix.path, "--json")
    assert group_names(json.loads(r.stdout)["groups"]) == truth and r.stderr == ""


def test_chain_of_small_edits_is_not_one_group(tmp_path):
    """A~B~C~D~E: each a small edit of the previous one (cosine 0.95), while A and C are not
    near-duplicates (cosine 0.805 < 0.9), nor A and D. Connected components would make one group
    of all five; groups around leaders keep every member a near-duplicate of its leader."""
    rng = np.random.default_rng(5)
    dim = 32
    e1, e2 = np.eye(dim, dtype=np.float32)[:2]
    theta = np.arccos(0.95)
    chain = np.stack([np.cos(t * theta) * e1 + np.sin(t * theta) * e2 for t in range(5)])
    others = pictures(rng, 60, dim)
    others[:, :2] = 0  # unrelated to the chain
    x = np.concatenate([chain, others]).astype(np.float32)
    names = list("ABCDE") + [f"x{i}" for i in range(60)]
    ix = make_index(tmp_path / "ix", x, names)
    # the widest radius: every chain pair is a candidate, only the cosine decides
    recs = ix.duplicates(radius=0.5, min_cosine=0.9)
    groups = group_names(recs)
    assert groups == {frozenset("ABC"), frozenset("DE")}  # B leads A and C; then D leads E
    for a, d in ("AD", "AE", "BD", "CE"):
        assert not any(a in g and d in g for g in groups)
    # every member is a confirmed near-duplicate of its leader (the first row of the group)
    snap = ix.snapshot
    from hashindex.dedup.find import find_duplicates

    dups = find_duplicates(snap, DedupConfig(radius=0.5, min_cosine=0.9))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for rows in dups.groups:
        assert (xn[rows] @ xn[rows[0]] >= 0.9 - 1e-6).all()
    # keep first: A stays in {A, B, C} though B leads; C's cosine to A (0.805) is still reported
    abc = next(r for r in recs if {it["name"] for it in r["items"]} == set("ABC"))
    cos = {it["name"]: it["cosine"] for it in abc["items"]}
    assert abc["keep"] == 0 and cos["A"] == 1.0 and cos["B"] == pytest.approx(0.95, abs=1e-4)
    assert cos["C"] == pytest.approx(float(xn[0] @ xn[2]), abs=1e-4)
    # the leader grouping itself: a path graph
    assert [g.tolist() for g in leader_groups(4, np.array([0, 1, 2]), np.array([1, 2, 3]))] == [[1, 0, 2]]


def test_duplicates_of_queries_by_embedding_and_id(planted):
    ix, x, names, truth = planted
    rng = np.random.default_rng(9)
    new = np.concatenate([edited(x[[3]], rng), pictures(rng, 1)])
    found = ix.duplicates(list(new))
    assert {d["name"] for d in found[0]["duplicates"]} == {"p3", "p3_a", "p3_b"}
    assert found[1]["duplicates"] == []
    for d in found[0]["duplicates"]:
        assert d["cosine"] >= DedupConfig().min_cosine and d["id"] in (3, 43, 53)
    by_id = ix.duplicates([5])
    assert {d["name"] for d in by_id[0]["duplicates"]} >= {"p5_a", "p5_b"}


def test_dedup_after_add_and_remove(tmp_path, planted):
    ix, x, names, truth = planted
    rng = np.random.default_rng(4)
    # a new near-duplicate of p20 (which had none), and a new picture
    new_ids = ix.add(np.concatenate([edited(x[[20]], rng), pictures(rng, 1)]), names=["p20_new", "fresh"])
    assert group_names(ix.duplicates()) == truth | {frozenset({"p20", "p20_new"})}
    # the CLI, a fresh process view of the folder, sees the commit too
    run_cli("dedup", ix.path, "-o", tmp_path / "g.json")
    assert group_names(json.loads((tmp_path / "g.json").read_text())["groups"]) == truth | {
        frozenset({"p20", "p20_new"})
    }
    gone = [0, 41, int(new_ids[0])]  # p0 (an original), p1_a (a copy), the new copy
    ix.remove(gone)
    recs = ix.duplicates()
    reported = {it["id"] for g in recs for it in g["items"]}
    assert not reported & set(gone)
    want = (truth - {frozenset({"p0", "p0_a", "p0_b"}), frozenset({"p1", "p1_a", "p1_b"})}) | {
        frozenset({"p0_a", "p0_b"}),
        frozenset({"p1", "p1_b"}),
    }
    assert group_names(recs) == want
    found = ix.duplicates(list(x[[0, 1, 20]]))
    for f in found:
        assert not {d["id"] for d in f["duplicates"]} & set(gone)
    assert {d["name"] for d in found[2]["duplicates"]} == {"p20"}
    # after compaction: the same groups
    ix.compact()
    assert group_names(ix.duplicates()) == want


# -- a small real-image case --------------------------------------------------------------------


def test_dedup_query_with_real_images(tmp_path):
    """Real photos through the packaged backbone: ``dedup --query`` finds the original of an edited
    copy (JPEG, slight crop) and nothing for an unrelated photo."""
    from PIL import Image
    from skimage import data

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    photos = {
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
        "camera": np.stack([data.camera()] * 3, -1),
    }
    for name, a in photos.items():
        Image.fromarray(a).save(imgs / f"{name}.png")
    cat = Image.fromarray(photos["cat"])
    w, h = cat.size
    cat.crop((w // 50, h // 50, w - w // 50, h - h // 50)).save(tmp_path / "cat_copy.jpg", quality=80)
    Image.fromarray(data.immunohistochemistry()).save(tmp_path / "other.png")
    run_cli("embed", imgs, tmp_path / "e.h5", "--image-size", 64, "--device", "cpu")
    # a probe needs more rows than five photos: fitted on 64 Fashion-MNIST images, same backbone
    run_cli("embed", "fashion-mnist", tmp_path / "fm.h5", "--limit", 64, "--image-size", 64, "--device", "cpu")
    run_cli("fit-probe", tmp_path / "fm.h5", tmp_path / "probe", "--method", "lsh", "--bits", 64)
    run_cli("build", tmp_path / "e.h5", tmp_path / "probe", tmp_path / "index")
    r = run_cli(
        "dedup", tmp_path / "index", "--query", tmp_path / "cat_copy.jpg", "--query", tmp_path / "other.png", "--json"
    )
    found = json.loads(r.stdout)
    assert [f["query"].rsplit("/", 1)[-1] for f in found] == ["cat_copy.jpg", "other.png"]
    assert [d["name"] for d in found[0]["duplicates"]] == ["cat.png"]
    assert found[1]["duplicates"] == []
    # the collection itself has no near-duplicates; once the copy is added, one group
    r = run_cli("dedup", tmp_path / "index", "--json")
    assert json.loads(r.stdout)["groups"] == []
    run_cli("add", tmp_path / "index", tmp_path / "cat_copy.jpg")
    r = run_cli("dedup", tmp_path / "index", "--json")
    (group,) = json.loads(r.stdout)["groups"]
    assert {it["name"] for it in group["items"]} == {"cat.png", "cat_copy.jpg"}
    id_of = {it["name"]: it["id"] for it in group["items"]}
    # which one stays: first/last by id, largest/smallest by file size (the PNG is the larger)
    assert (tmp_path / "imgs" / "cat.png").stat().st_size > (tmp_path / "cat_copy.jpg").stat().st_size
    for keep, stays in (
        ("first", "cat.png"),
        ("last", "cat_copy.jpg"),
        ("largest", "cat.png"),
        ("smallest", "cat_copy.jpg"),
    ):
        r = run_cli("dedup", tmp_path / "index", "--keep", keep, "--json")
        assert json.loads(r.stdout)["groups"][0]["keep"] == id_of[stays], keep


@pytest.mark.parametrize("budget", [1 << 30, 4 * 24 * 50])  # all rows at once; 50 rows at a time
def test_cosines_equal_the_formula_read_whole_or_in_chunks(tmp_path, budget):
    from hashindex.dedup.find import cosines
    from hashindex.search.rerank import FloatRows

    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 24)).astype(np.float32) * rng.uniform(0.1, 10, (400, 1)).astype(np.float32)
    write_embeddings(tmp_path / "e.h5", x)

    class Snap:
        def float_rows(self):
            return FloatRows(tmp_path / "e.h5")

    i, j = rng.integers(0, 400, 3000), rng.integers(0, 400, 3000)
    want = (x[i] * x[j]).sum(1) / (np.linalg.norm(x[i], axis=1) * np.linalg.norm(x[j], axis=1))
    np.testing.assert_allclose(cosines(Snap(), i, j, budget=budget), want, atol=1e-5)
