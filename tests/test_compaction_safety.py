"""Writers and readers never see a half-made index: a kill -9 at every step of a compaction
leaves an index every command opens (and the next writer finishes the swap); readers opening
during compactions get the complete old or new index, never an error; every path to one index
(a symbolic link, the folder itself) shares one writer lock, and a compaction through a link
keeps the link; a doctored embeddings file is refused by every command that reads it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_embeddings

import hashindex
from hashindex.cli.main import cli
from hashindex.core.durable import OutputLockedError
from hashindex.live.folder import CRASH_ENV, compact_paths
from hashindex.live.live_index import open_live

STEPS = ["compact-written", "compact-between-renames", "compact-swapped", "compact-cleaned"]


@pytest.fixture
def live_folder(tmp_path, rng):
    """A small index with a pending add and a pending remove (something to compact)."""
    n, d = 300, 40
    x = rng.standard_normal((n, d)).astype(np.float32)
    views = (x[:, None] + 0.3 * rng.standard_normal((n, 2, d))).astype(np.float32)
    labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, n)]
    write_embeddings(tmp_path / "db.h5", x, views, labels)
    hashindex.fit_probe(tmp_path / "db.h5", tmp_path / "probe", method="itq", bits=32)
    ix = hashindex.build_index(tmp_path / "db.h5", tmp_path / "probe", tmp_path / "index", kind="flat")
    ix.add(x[:7] + 0.01, names=[f"new{i}" for i in range(7)])
    ix.remove([3, 4])
    return tmp_path, x


def _cli(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_any_step_of_compact_leaves_an_index_every_command_opens(live_folder, step):
    tmp, x = live_folder
    index = tmp / "index"
    want = hashindex.open_index(index).search(x[:4], k=10).ids
    env = dict(os.environ, **{CRASH_ENV: step})
    r = subprocess.run(
        [sys.executable, "-m", "hashindex", "-q", "compact", str(index)], env=env, capture_output=True, timeout=120
    )
    assert r.returncode == -9, r.stderr.decode()
    if step == "compact-between-renames":
        assert not index.exists() and all(p.exists() for p in compact_paths(index))
    # Readers: the complete old or new index, the same items.
    assert (hashindex.open_index(index).search(x[:4], k=10).ids == want).all()
    for args in (["info", index], ["query", index, "--embeddings", tmp / "db.h5", "--limit", "2"]):
        r = _cli(*args)
        assert r.exit_code == 0, (args, r.output)
    # A writer finishes (or undoes) the swap, then works.
    r = _cli("remove", index, "--ids", "5")
    assert r.exit_code == 0, r.output
    assert index.is_dir() and not any(p.exists() for p in compact_paths(index))
    assert _cli("compact", index).exit_code == 0
    got = hashindex.open_index(index)
    assert len(got) == 300 + 7 - 3 and 5 not in got.search(x[5:6], k=400).ids


WRITER = """
import os, sys, numpy as np, hashindex
ix = hashindex.open_index(sys.argv[1])
x = np.random.default_rng(1).standard_normal((1, ix.snapshot.probe.input_dim)).astype(np.float32)
done = 0
while not os.path.exists(sys.argv[2]) and done < 5000:
    ix.add(x, names=[f"w{done}"])
    ix.compact()
    done += 1
    open(sys.argv[2] + ".count", "w").write(str(done))
print(done, flush=True)
"""


def test_readers_during_compactions_see_no_errors(live_folder):
    """1,000 opens while another process adds and compacts, at least 20 times."""
    tmp, x = live_folder
    index, stop = tmp / "index", tmp / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(index), str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    opens, errors, deadline = 0, [], time.monotonic() + 300
    count = tmp / "stop.count"

    def compactions() -> int:
        try:
            return int(count.read_text() or 0)
        except (OSError, ValueError):
            return 0

    try:
        while (opens < 1000 or compactions() < 20) and time.monotonic() < deadline and writer.poll() is None:
            try:
                assert open_live(index).snapshot.ntotal >= 300 + 7 - 2
                opens += 1
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    compactions = int(out.split()[-1]) if out.split() else 0
    assert not errors, errors[:3]
    assert writer.returncode == 0, err
    assert opens >= 1000 and compactions >= 20, (opens, compactions)


def test_two_paths_to_one_index_share_the_writer_lock(live_folder):
    tmp, x = live_folder
    link = tmp / "link"
    os.symlink(tmp / "index", link)
    by_folder, by_link = open_live(tmp / "index"), open_live(link)
    by_link.lock_wait = 0
    with by_folder.writing():
        with pytest.raises(OutputLockedError):
            with by_link.writing():
                pass
    by_link.lock_wait = 10
    by_link.compact()
    assert link.is_symlink() and os.path.realpath(link) == str(tmp / "index")
    by_link.add(x[:1], ["through the link"])
    assert hashindex.open_index(tmp / "index").ids_of(["through the link"]).size == 1


def _doctor(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: f.attrs.__setitem__("seed", 7),
        lambda f: f.attrs.__setitem__("views", 3),
        lambda f: f["names"].__setitem__(0, "renamed"),
        lambda f: f["labels"].__setitem__(0, np.array([0, 0, 1], np.uint8)),
    ],
    ids=["attribute", "views", "name", "label"],
)
def test_a_doctored_embeddings_file_is_refused_by_every_command(live_folder, edit):
    tmp, _ = live_folder
    _doctor(tmp / "db.h5", edit)
    commands = [
        ["fit-probe", tmp / "db.h5", tmp / "p2", "--method", "itq", "--bits", "16"],
        ["build", tmp / "db.h5", tmp / "probe", tmp / "i2"],
        ["add", tmp / "index", "--embeddings", tmp / "db.h5"],
        ["evaluate", tmp / "index", tmp / "db.h5", "--no-float"],
        ["query", tmp / "index", "--embeddings", tmp / "db.h5"],
    ]
    for args in commands:
        r = _cli(*args)
        assert r.exit_code == 3, (args[0], r.exit_code, r.output)
        assert "error:" in r.output and "Traceback" not in r.output
    r = _cli("fit-probe", tmp / "db.h5", tmp / "p3", "--method", "itq", "--bits", "16", "--no-verify")
    assert r.exit_code == 0, r.output
