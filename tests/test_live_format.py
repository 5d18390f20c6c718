"""A live index's manifest carries ``live`` (index format 4, which builds write; a format-2
folder becomes format 3 at its first commit), read and written through the Manifest type; opening
a live index imports no torch; the live commands follow the CLI's conventions (-q, comma lists,
defaults from hashindex.core.config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_embeddings

from hashindex import build_index
from hashindex.cli.main import cli
from hashindex.core.config import DEFAULT_LOCK_WAIT, FitConfig, ServeConfig, default
from hashindex.core.errors import IntegrityError
from hashindex.index.load import load_index
from hashindex.index.manifest import INDEX_FORMAT, LIVE_FORMAT, MANIFEST, Manifest, sealed_bytes
from hashindex.live.live_index import open_live
from hashindex.probe.fit import fit_probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 16)).astype(np.float32)
    emb = write_embeddings(tmp_path / "e.h5", x, labels=np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 60)])
    fit_probe(emb, FitConfig(method="lsh", bits=16), progress=False).save(tmp_path / "p")
    build_index(emb, tmp_path / "p", tmp_path / "idx", kind="flat")
    return tmp_path / "idx", x


def _doc(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_bytes())


def test_builds_are_format_4_and_a_commit_adds_live(folder):
    path, x = folder
    assert Manifest.read(path)[0].format == INDEX_FORMAT == 4 and "live" not in _doc(path)
    live = open_live(path)
    ids = live.add(x[:3] + 0.01, ["a", "b", "c"])
    live.remove([0])
    m = Manifest.read(path)[0]
    assert m.format == INDEX_FORMAT and _doc(path)["format"] == 4  # format 4 carries live when there is one
    assert m.live["generation"] == 2 and m.live["next_id"] == 63 and len(m.live["commits"]) == 2
    assert all(rel in m.files for rel in m.live["commits"])
    assert ids.tolist() == [60, 61, 62]
    assert load_index(path).manifest.live == m.live  # the sealed bytes verify
    live.compact()
    m = Manifest.read(path)[0]
    assert m.format == 4 and m.live["commits"] == [] and m.ntotal == 62 and m.live["generation"] == 3
    assert open_live(path).snapshot.ntotal == 62


def test_a_format_2_folder_becomes_format_3_at_its_first_commit(folder):
    """Folders built by an older hashindex (format 2, no live) still open, and their first
    commit makes them format 3 (format 2 plus live), as before."""
    path, x = folder
    doc = _doc(path)
    assert doc["index"]["kind"] == "flat"
    _reseal(path, dict(doc, format=2))
    assert Manifest.read(path)[0].format == 2 and load_index(path).ntotal == 60
    live = open_live(path)
    assert live.add(x[:2] + 0.01, ["a", "b"]).tolist() == [60, 61]
    m = Manifest.read(path)[0]
    assert m.format == LIVE_FORMAT == 3 and _doc(path)["format"] == 3
    assert m.live["generation"] == 1 and m.live["next_id"] == 62 and len(m.live["commits"]) == 1
    assert load_index(path).manifest.live == m.live
    snap = open_live(path).snapshot
    assert snap.ntotal == 62 and snap.ids[-2:].tolist() == [60, 61]


def _reseal(path: Path, doc: dict) -> None:
    (path / MANIFEST).write_bytes(sealed_bytes(doc))


def test_the_live_key_and_format_3_go_together(folder):
    path, x = folder
    plain = _doc(path)
    live = open_live(path)
    live.add(x[:2], ["a", "b"])
    three = _doc(path)
    cases = {
        "a format-2 manifest with live": dict(three, format=2),
        "format 3 without live": dict(plain, format=3),
        "format 1 with live": {k: v for k, v in dict(three, format=1).items() if k != "manifest_sha256"},
        "live naming a file not listed": dict(three, live=dict(three["live"], commits=["commits/0000000009-add.npz"])),
        "live not an object": dict(three, live=[1, 2]),
        "negative next_id": dict(three, live=dict(three["live"], next_id=-1)),
    }
    for why, doc in cases.items():
        _reseal(path, doc)
        with pytest.raises(IntegrityError, match="corrupt"):
            Manifest.read(path)
            pytest.fail(why)
    _reseal(path, three)
    assert open_live(path).snapshot.ntotal == 62


def test_opening_a_live_index_and_searching_by_codes_imports_no_torch(folder):
    path, x = folder
    live = open_live(path)
    live.add(x[:4] * 2, ["a", "b", "c", "d"])
    live.remove([5])
    codes = live.snapshot.codes[-2:]
    np.save(path.parent / "q.npy", codes)
    check = "\nimport sys\nbad = [m for m in ('torch', 'timm') if m in sys.modules]\nassert not bad, bad\nprint('ok')"
    code = (
        "import sys, numpy as np\nfrom hashindex.live.live_index import open_live\n"
        "from hashindex.search.ranking import hamming_search\n"
        "s = open_live(sys.argv[1]).snapshot\nd, ids = hamming_search(s.index, np.load(sys.argv[2]), 1)\n"
        "print(s.ntotal, d.ravel().tolist(), s.item(int(ids[0, 0]))['name'])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code + check, str(path), str(path.parent / "q.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("63 [0, 0] ") and r.stdout.rstrip().endswith("ok")


def test_live_commands_follow_the_cli_conventions(folder):
    path, _ = folder
    runner = CliRunner()
    r = runner.invoke(cli, ["remove", str(path), "--ids", "1,x"])
    assert r.exit_code == 2 and "comma-separated" in r.output
    r = runner.invoke(cli, ["-q", "remove", str(path), "--ids", "1,2", "--ids", "3"])
    assert r.exit_code == 0 and r.output == "", r.output
    assert open_live(path).snapshot.ntotal == 57
    r = runner.invoke(cli, ["remove", str(path), "--ids", "4"])
    assert r.exit_code == 0 and r.output.startswith("removed 1 items")
    opts = {p.name: p for p in cli.commands["remove"].params}
    assert f"[default: {DEFAULT_LOCK_WAIT:g}]" in opts["wait"].help
    serve = {p.name: p for p in cli.commands["serve"].params}
    assert serve["port"].default == default(ServeConfig, "port") and serve["host"].default == default(
        ServeConfig, "host"
    )
