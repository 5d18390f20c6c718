"""Crash-safe, resumable embedding: kill -9 at random moments, resume, compare; the output lock;
the resume folder's edge cases (torn shards, other settings, a run stopped after publishing)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import FAKE_SPEC

from hashindex.core.durable import OutputLock, OutputLockedError, lock_path
from hashindex.core.errors import InputError, IntegrityError
from hashindex.store.reader import clean_published, open_embeddings
from hashindex.store.resume import partial_path
from hashindex.store.writer import EmbeddingsWriter

N_IMAGES, BATCH = 200, 16
N_BATCHES = -(-N_IMAGES // BATCH)
REPO = Path(__file__).resolve().parents[1]
# One thread per run keeps results bit-identical between runs and the 2-core CI machine calm;
# committing after every batch gives the kills many distinct states to land in.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HASHINDEX_COMMIT_SECONDS="0", PYTHONPATH=str(REPO))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_source(tmp_path_factory):
    """A small IDX folder: 200 smooth random 28x28 gray images with 4 classes."""
    d = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 256, (N_IMAGES, 7, 7)).astype(np.float32)
    imgs = np.kron(coarse, np.ones((4, 4), np.float32)).clip(0, 255).astype(np.uint8)
    _write_idx(d / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 4, N_IMAGES).astype(np.uint8))
    return d


def _cmd(src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hashindex",
        "-q",
        "embed",
        str(src),
        str(out),
        "--image-size",
        "32",
        "--views",
        "1",
        "--limit",
        str(N_IMAGES),
        "--batch-size",
        str(BATCH),
        "--device",
        "cpu",
        "--seed",
        "3",
    ]


def _launch(src, out):
    return subprocess.Popen(_cmd(src, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {out} {err}"


@pytest.fixture(scope="module")
def reference(idx_source, tmp_path_factory):
    """An uninterrupted run of the same command."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    _finish(_launch(idx_source, out))
    return _arrays(out)


def _arrays(path: Path) -> dict:
    e = open_embeddings(path, verify=True)
    return {
        "embeddings": e.embeddings(),
        "views": e.views(),
        "labels": e.labels(),
        "names": e.names(),
        "source_index": e.source_index(),
    }


def _shards(out: Path) -> int:
    try:
        return sum(1 for n in os.listdir(partial_path(out)) if n.startswith("shard-"))
    except FileNotFoundError:
        return 0


def _kill_at_random_moment(proc, out: Path, rng: np.random.Generator) -> bool:
    """SIGKILL ``proc`` at a random moment; False when it finished first.

    Mostly a moment during the work: after a random number of newly committed batches (up to all
    of them, which lands in the assembly and publication) plus a random delay; sometimes a
    random time during start-up.
    """
    if rng.random() < 0.15:
        deadline = time.monotonic() + rng.uniform(0.1, 4.0)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
    else:
        base = _shards(out)
        target = base + int(rng.integers(1, max(2, N_BATCHES - base + 2)))
        while proc.poll() is None and _shards(out) < target and not out.exists():
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.1))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return True


def _check_final(out: Path, reference: dict, cleaned: bool = True) -> None:
    got = _arrays(out)  # verify=True: lengths, checksums, unique increasing ids, finite values
    idx = got["source_index"]
    assert len(np.unique(idx)) == len(idx) == N_IMAGES  # each id exactly once
    assert np.isfinite(got["embeddings"]).all() and (np.abs(got["embeddings"]).sum(1) > 0).all()
    assert (np.abs(got["views"]).sum(2) > 0).all()
    for k, want in reference.items():
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got[k], want, err_msg=k)  # bit-identical on CPU
        else:
            assert got[k] == want, k
    if cleaned:
        assert not partial_path(out).exists() and not lock_path(out).exists()


def _kill_resume_cycle(idx_source, tmp_path, reference, kills: int, seed: int) -> None:
    """Launch the command and kill it at random moments, each time re-running it to resume,
    until ``kills`` kills have happened; every output must equal the uninterrupted one."""
    rng = np.random.default_rng(seed)
    done, seq, started = 0, 0, False
    out = tmp_path / "run0.h5"
    while done < kills:
        proc = _launch(idx_source, out)
        started = True
        if _kill_at_random_moment(proc, out, rng):
            done += 1
            if not out.exists():
                with pytest.raises(InputError, match="resume"):  # readers see no partial rows
                    open_embeddings(out)
                continue  # the next launch resumes it
            # Killed after publishing (maybe while cleaning up): the file is already whole, and
            # the resume only has the clean-up left to do.
            _check_final(out, reference, cleaned=False)
            _finish(_launch(idx_source, out))
        else:
            _finish(proc)  # it completed before its kill moment
        _check_final(out, reference)
        seq, started = seq + 1, False
        out = tmp_path / f"run{seq}.h5"
    if started:
        _finish(_launch(idx_source, out))  # the resume after the last kill
        _check_final(out, reference)


def test_kill9_then_resume_equals_uninterrupted_run(idx_source, tmp_path, reference):
    _kill_resume_cycle(idx_source, tmp_path, reference, kills=2, seed=1)


@pytest.mark.slow
def test_kill9_at_20_random_moments(idx_source, tmp_path, reference):
    _kill_resume_cycle(idx_source, tmp_path, reference, kills=20, seed=2024)


# -- the output lock -----------------------------------------------------------------------------

_HOLDER = "import sys, time; from hashindex.core.durable import OutputLock; OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"


def test_second_writer_fails_fast_and_a_killed_writer_leaves_no_stale_lock(tmp_path, idx_source):
    from click.testing import CliRunner

    from hashindex.cli.main import cli

    out = tmp_path / "e.h5"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        r = CliRunner().invoke(cli, ["-q", "embed", str(idx_source), str(out), "--image-size", "32", "--device", "cpu"])
        assert time.perf_counter() - t0 < 2.0  # before loading any model
        assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output, r.output
        assert f"process {holder.pid} is already writing" in r.output
        with pytest.raises(OutputLockedError):
            EmbeddingsWriter(out, n=1, dim=2, views=0, label_dim=0, attrs={})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # left behind by the killed holder, but no longer locked
    with OutputLock(out) as lock:
        assert lock.fd is not None
        with pytest.raises(OutputLockedError, match="already writing"):  # same process, second writer
            OutputLock(out).acquire()
    OutputLock(out).acquire().release(remove=True)
    assert not lock_path(out).exists()


# -- the resume folder, at the library level (no backbone) --------------------------------------


def _attrs(**over):
    a = {
        "backbone": json.dumps(dict(FAKE_SPEC, num_features=4)),
        "augment": "{}",
        "views": 1,
        "seed": 0,
        "source": json.dumps({"kind": "synthetic", "n": 10}),
        "label_names": json.dumps(None),
    }
    a.update(over)
    return a


def _data(rng, n=10):
    return rng.standard_normal((n, 4)).astype(np.float32), rng.standard_normal((n, 1, 4)).astype(np.float32)


def _append(w, x, v, lo, hi, failed=()):
    keep = [i for i in range(lo, hi) if i not in failed]
    w.append(
        items_done=hi,
        embeddings=x[keep],
        views=v[keep],
        labels=None,
        names=[f"i{i}" for i in keep],
        source_index=keep,
        failures=[(i, f"i{i}", "OSError", "broken") for i in failed if lo <= i < hi],
        embed_seconds=float(hi),
    )


def test_writer_resumes_from_durable_shards_and_discards_torn_ones(tmp_path, rng):
    x, v = _data(rng)
    out = tmp_path / "e.h5"
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    _append(w, x, v, 0, 3)
    _append(w, x, v, 3, 6, failed={4})
    w.lock.release()  # the process "dies": no finish, no close
    with pytest.raises(InputError, match="resume"):  # readers see no file until it is complete
        open_embeddings(out)
    work = partial_path(out)
    shards = sorted(work.glob("shard-*"))
    assert len(shards) == 2
    (work / ".tmp-999-shard-000000000006-000000000008.npz").write_bytes(b"PK\x03\x04 torn")
    (work / "shard-000000000009-000000000010.npz").write_bytes(b"not after a gap")  # no chain to it
    (work / "assembled.h5").write_bytes(b"half an HDF5 file")
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    assert (w.items_done, w.rows, w.attr("embed_seconds")) == (6, 5, 6.0)
    assert sorted(p.name for p in work.iterdir()) == sorted(["settings.json"] + [p.name for p in shards])
    _append(w, x, v, 6, 10, failed={9})
    w.finish(device="cpu")
    e = open_embeddings(out, verify=True)
    want = [0, 1, 2, 3, 5, 6, 7, 8]
    np.testing.assert_array_equal(e.source_index(), want)
    np.testing.assert_array_equal(e.embeddings(), x[want])
    np.testing.assert_array_equal(e.views(), v[want])
    assert [f["source_index"] for f in e.failures()] == [4, 9] and e.failures()[0]["error"] == "OSError"
    assert e.attrs["embed_seconds"] == 10.0 and e.attrs["items_done"] == 10 and e.attrs["device"] == "cpu"
    assert not work.exists() and not lock_path(out).exists()


def test_a_shard_torn_in_its_middle_is_dropped_with_everything_after_it(tmp_path, rng):
    x, v = _data(rng)
    out = tmp_path / "e.h5"
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    for lo in range(0, 8, 2):
        _append(w, x, v, lo, lo + 2)
    w.lock.release()
    second = sorted(partial_path(out).glob("shard-*"))[1]
    second.write_bytes(second.read_bytes()[:100])  # e.g. a disk that lied about fsync
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    assert w.items_done == 2  # shards 2.. are gone: they are redone
    _append(w, x, v, 2, 10)
    w.finish()
    np.testing.assert_array_equal(open_embeddings(out, verify=True).embeddings(), x)


def test_corruption_found_only_at_assembly_is_removed_and_reported(tmp_path, rng):
    x, v = _data(rng)
    out = tmp_path / "e.h5"
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    _append(w, x, v, 0, 5)
    _append(w, x, v, 5, 10)
    last = sorted(partial_path(out).glob("shard-*"))[-1]
    data = bytearray(last.read_bytes())
    data[200] ^= 0xFF  # inside an array: the zip CRC catches it when the member is read in full
    last.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="re-run the same command"):
        w.finish()
    w.close()
    assert not out.exists() and not last.exists()
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    assert w.items_done == 5


def test_resume_with_other_settings_or_a_foreign_partial_is_refused(tmp_path, rng):
    x, v = _data(rng)
    out = tmp_path / "e.h5"
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    _append(w, x, v, 0, 3)
    w.close()
    with pytest.raises(InputError, match="other settings.*seed"):
        EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs(seed=1))
    old = tmp_path / "old.h5"
    partial_path(old).write_bytes(b"an HDF5 partial file of an older hashindex")
    with pytest.raises(InputError, match="not a resume folder"):
        EmbeddingsWriter(old, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    assert not lock_path(old).exists() or OutputLock(old).acquire()  # the refusal released the lock


def test_writer_validates_batches(tmp_path, rng):
    x, v = _data(rng)
    w = EmbeddingsWriter(tmp_path / "e.h5", n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    with pytest.raises(ValueError, match="shape"):
        w.append(items_done=2, embeddings=x[:2, :3], views=v[:2], labels=None, names=["a", "b"], source_index=[0, 1])
    with pytest.raises(ValueError, match="increase"):
        w.append(items_done=2, embeddings=x[:2], views=v[:2], labels=None, names=["a", "b"], source_index=[1, 0])
    with pytest.raises(ValueError, match="exceeds"):
        w.append(items_done=11, embeddings=x[:2], views=v[:2], labels=None, names=["a", "b"], source_index=[0, 1])
    w.close()


def test_verify_catches_modified_contents(tmp_path, rng):
    x, v = _data(rng)
    out = tmp_path / "e.h5"
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    _append(w, x, v, 0, 10)
    w.finish()
    with h5py.File(out, "a") as f:
        f["embeddings"][3, 1] += 1e-3
    with pytest.raises(IntegrityError, match="/embeddings does not match its recorded sha256"):
        open_embeddings(out, verify=True)
    with h5py.File(out, "a") as f:
        f["embeddings"][3, 1] = x[3, 1]
        f["source_index"][4] = 3
    with pytest.raises(IntegrityError, match="strictly increasing"):
        open_embeddings(out, verify=True)


def test_run_stopped_after_publishing_is_finished_by_a_rerun(tmp_path, rng, monkeypatch):
    import hashindex.store.writer as store

    x, v = _data(rng)
    out = tmp_path / "e.h5"
    w = EmbeddingsWriter(out, n=10, dim=4, views=1, label_dim=0, attrs=_attrs())
    _append(w, x, v, 0, 10)

    def die(work):
        raise KeyboardInterrupt  # stands in for a kill between publishing and cleaning up

    monkeypatch.setattr(store, "remove_resume_folder", die)
    with pytest.raises(KeyboardInterrupt):
        w.finish()
    w.close()
    monkeypatch.undo()
    assert out.exists() and partial_path(out).is_dir()
    with OutputLock(out):
        assert not clean_published(out, _attrs(seed=5))  # another command's output: left alone
        assert clean_published(out, _attrs())
    assert not partial_path(out).exists()
    np.testing.assert_array_equal(open_embeddings(out, verify=True).embeddings(), x)
