"""Nothing silently wrong: a resume notices a changed source, cross-file references are checked by
content, a damaged manifest cannot downgrade itself, probes are published atomically, empty and
corrupt inputs give one clean line, and random damage to an embeddings file is always refused."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAKE_SPEC, mutate, write_embeddings
from PIL import Image

from hashindex import build_index
from hashindex.cli.main import cli
from hashindex.core.config import FitConfig
from hashindex.core.errors import HashIndexError, InputError, IntegrityError, MismatchError
from hashindex.index.load import load_index
from hashindex.index.manifest import INDEX_FORMAT
from hashindex.measure.evaluate import evaluate
from hashindex.probe.fit import fit_probe
from hashindex.store.reader import open_embeddings
from hashindex.store.resume import partial_path
from hashindex.store.writer import EmbeddingsWriter

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HASHINDEX_COMMIT_SECONDS="0", PYTHONPATH=str(REPO))


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def one_clean_line(r, code: int) -> None:
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output


# -- resume notices a changed source -------------------------------------------------------------


def _image_folder(root: Path, n_per_class: int = 60) -> Path:
    rng = np.random.default_rng(3)
    for cls in ("bag", "coat"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / cls / f"{i:04d}.png")
    return root


def _embed_cmd(src: Path, out: Path, *extra) -> list[str]:
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
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        *extra,
    ]


def _kill_after_shards(proc, out: Path, shards: int) -> None:
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if sum(n.startswith("shard-") for n in os.listdir(partial_path(out))) >= shards:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def test_resume_refuses_a_source_changed_after_a_kill(tmp_path):
    src = _image_folder(tmp_path / "imgs")
    out = tmp_path / "m.h5"
    proc = subprocess.Popen(_embed_cmd(src, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _kill_after_shards(proc, out, 2)
    # An item the killed run already embedded moves to another class under another name.
    os.rename(src / "bag" / "0000.png", src / "coat" / "zzzz.png")
    r = subprocess.run(_embed_cmd(src, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and not out.exists(), r.stderr
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    assert "item 0 was 'bag/0000.png'" in r.stderr and "'bag/0001.png'" in r.stderr and "--restart" in r.stderr
    r = subprocess.run(_embed_cmd(src, out, "--restart"), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    e = open_embeddings(out, verify=True)
    assert e.n == 120 and "coat/zzzz.png" in e.names() and "bag/0000.png" not in e.names()
    assert e.labels()[e.names().index("coat/zzzz.png")].tolist() == [0, 1]


# -- the manifest cannot be downgraded by damage -------------------------------------------------


@pytest.fixture
def small_index(tmp_path, clusters):
    fit_probe(clusters, FitConfig(method="lsh", bits=16), progress=False).save(tmp_path / "p")
    return build_index(clusters, tmp_path / "p", tmp_path / "idx")


def test_no_one_bit_flip_of_the_format_key_or_value_loads(small_index):
    mf = small_index.path / "manifest.json"
    raw = mf.read_bytes()
    key = f'"format": {INDEX_FORMAT}'.encode()
    start = raw.index(key)
    outcomes = {}
    for pos in range(start + 1, start + len(key)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            mf.write_bytes(bytes(bad))
            try:
                load_index(small_index.path)
                outcomes[(pos, bit)] = "loaded"
            except IntegrityError:
                outcomes[(pos, bit)] = "corrupt"
            except InputError as e:
                outcomes[(pos, bit)] = f"input: {e}"
    mf.write_bytes(raw)
    # Even "4" -> "5" or "6" (a newer format, for all it says) is caught: its seal does not hold.
    assert set(outcomes.values()) == {"corrupt"}, {k: v for k, v in outcomes.items() if v != "corrupt"}
    # An edit of the value to 1 keeps the checksum key that format 1 never had: corrupt too.
    mf.write_bytes(raw.replace(key, b'"format": 1'))
    with pytest.raises(IntegrityError, match="format-1"):
        load_index(small_index.path)


# -- cross-file references by content ------------------------------------------------------------


def _twin(path: Path, emb, rng) -> object:
    """Another embeddings file of the same shape, backbone and labels: other rows."""
    x = emb.embeddings()
    return write_embeddings(path, x[rng.permutation(len(x))], emb.views(), emb.labels())


def test_same_shape_other_database_is_refused(tmp_path, clusters, small_index, rng):
    other = _twin(tmp_path / "other.h5", clusters, rng)
    q = write_embeddings(tmp_path / "q.h5", clusters.embeddings(slice(0, 20)), labels=clusters.labels()[:20])
    with pytest.raises(MismatchError, match="not the embeddings file"):
        evaluate(small_index, q, 10, db=other)
    # The file at the recorded path replaced by another of the same shape: float reference and
    # float re-ranking both notice.
    os.replace(other.path, clusters.path)
    with pytest.raises(MismatchError, match="not the embeddings file"):
        evaluate(small_index, q, 10)
    with pytest.raises(MismatchError, match="not the embeddings file"):
        small_index.search(q.embeddings(), 5, rerank=2)
    r = run("evaluate", small_index.path, q.path, "--topk", 10)
    one_clean_line(r, 2)


def test_reordered_label_names_are_refused(tmp_path, rng):
    x = rng.standard_normal((30, 8)).astype(np.float32)
    y = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 30)]
    db = write_embeddings(
        tmp_path / "db.h5", x, (x[:, None] + 0.1).repeat(2, 1), y, label_names=["bag", "boot", "coat"]
    )
    fit_probe(db, FitConfig(method="lsh", bits=16), progress=False).save(tmp_path / "p")
    index = build_index(db, tmp_path / "p", tmp_path / "idx")
    q = write_embeddings(tmp_path / "q.h5", x[:5], labels=y[:5, ::-1], label_names=["coat", "boot", "bag"])
    with pytest.raises(MismatchError, match="another order"):
        evaluate(index, q, 10)
    same = write_embeddings(tmp_path / "q2.h5", x[:5], labels=y[:5], label_names=["bag", "boot", "coat"])
    assert evaluate(index, same, 10)["map"] > 0


# -- probes are published atomically -------------------------------------------------------------


def test_probe_folder_is_all_or_nothing(tmp_path, clusters, monkeypatch):
    probe = fit_probe(clusters, FitConfig(method="itq", bits=16), progress=False)
    tmp_path = tmp_path / "probes"
    tmp_path.mkdir()
    probe.save(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    with pytest.raises(InputError, match="not empty"):  # never written over in place
        probe.save(tmp_path / "old")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before

    def fail(self, *a, **k):  # dies between the weights and the JSON
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError):
        probe.save(tmp_path / "new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no half probe, no temporary folder
    r = run("build", clusters.path, tmp_path / "new", tmp_path / "idx")
    one_clean_line(r, 2)
    assert not (tmp_path / "idx").exists()


# -- empty inputs --------------------------------------------------------------------------------


def test_zero_row_files_are_refused_with_one_line(tmp_path, clusters, small_index):
    attrs = {
        "backbone": json.dumps(dict(FAKE_SPEC, num_features=clusters.dim)),
        "augment": "{}",
        "views": 2,
        "seed": 0,
        "source": json.dumps({"kind": "synthetic"}),
        "label_names": json.dumps(None),
    }
    w = EmbeddingsWriter(tmp_path / "empty.h5", n=3, dim=clusters.dim, views=2, label_dim=0, attrs=attrs)
    w.append(
        items_done=3,
        embeddings=None,
        views=None,
        labels=None,
        names=[],
        source_index=[],
        failures=[(i, f"img{i}", "UnidentifiedImageError", "not an image") for i in range(3)],
    )
    w.finish()
    empty = tmp_path / "empty.h5"
    one_clean_line(run("fit-probe", empty, tmp_path / "p0"), 2)
    one_clean_line(run("build", empty, small_index.path / "probe", tmp_path / "i0"), 2)
    one_clean_line(run("evaluate", small_index.path, empty), 2)
    assert not (tmp_path / "p0").exists() and not (tmp_path / "i0").exists()


# -- every input error is one line ---------------------------------------------------------------


def test_single_image_file_is_embedded_as_one_item(tmp_path):
    Image.new("RGB", (40, 30), (200, 50, 10)).save(tmp_path / "a.png")
    r = run("-q", "embed", tmp_path / "a.png", tmp_path / "one.h5", "--image-size", 32, "--device", "cpu")
    assert r.exit_code == 0, r.output
    e = open_embeddings(tmp_path / "one.h5", verify=True)
    assert e.n == 1 and e.names() == ["a.png"] and e.labels() is None


def test_a_binary_file_that_is_no_image_is_not_read_as_a_list(tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    one_clean_line(run("embed", tmp_path / "blob.bin", tmp_path / "o.h5"), 2)


def _idx_header(n: int) -> bytes:
    return bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")


@pytest.mark.parametrize("damage", ["truncated-header", "bad-gzip"])
def test_corrupt_idx_files_give_one_line(tmp_path, damage):
    d = tmp_path / "idx"
    d.mkdir()
    if damage == "truncated-header":
        (d / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    else:
        raw = gzip.compress(_idx_header(4) + bytes(4 * 28 * 28))
        bad = bytearray(raw)
        bad[len(raw) // 2 : len(raw) // 2 + 8] = b"\xff" * 8
        (d / "train-images-idx3-ubyte.gz").write_bytes(bytes(bad))
    one_clean_line(run("embed", d, tmp_path / "o.h5"), 2)


def test_a_killed_decoding_worker_is_one_resumable_line(tmp_path):
    src = _image_folder(tmp_path / "imgs", 150)
    out = tmp_path / "w.h5"
    cmd = _embed_cmd(src, out)[:-2] + ["--workers", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, worker = time.monotonic() + 300, None
    while worker is None and time.monotonic() < deadline and proc.poll() is None:
        try:  # the data-loader worker is a child of the embed process, once it has started
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if (
                kids
                and partial_path(out).is_dir()
                and any(n.startswith("shard-") for n in os.listdir(partial_path(out)))
            ):
                worker = int(kids[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.01)
    assert worker is not None, "no worker seen"
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("error:")], err
    assert "worker" in err and "re-run the same command to resume" in err
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert open_embeddings(out, verify=True).n == 300


# -- damage to an embeddings file ----------------------------------------------------------------


def _contents(path: Path):
    """Everything h5py reads back: datasets and attributes (None when it cannot read them)."""
    try:
        with h5py.File(path, "r") as f:
            data = {k: f[k][()].tolist() for k in f}  # lists: strings by value, not by pointer
            attrs = {k: str(f.attrs[k]) for k in f.attrs}
        return data, attrs
    except Exception:
        return None


def test_1000_mutations_of_an_embeddings_file_are_refused_or_harmless(tmp_path, rng):
    x = rng.standard_normal((40, 12)).astype(np.float32)
    e = write_embeddings(
        tmp_path / "e.h5",
        x,
        (x[:, None] + rng.standard_normal((40, 2, 12))).astype(np.float32),
        np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 40)],
    )
    path, raw = e.path, e.path.read_bytes()
    intact = _contents(path)
    crashes, silent, refused, harmless = [], [], 0, 0
    for _ in range(1000):
        what, damaged = mutate(raw, rng)
        path.write_bytes(damaged)
        changed = _contents(path) != intact
        try:
            open_embeddings(path, verify=True)
            if changed:
                silent.append(what)
            else:
                harmless += 1  # bytes no reader looks at (free space, padding)
        except HashIndexError as err:
            refused += 1
            assert "\n" not in str(err).strip()
        except Exception as err:
            crashes.append(f"{what}: {type(err).__name__}: {err}")
    path.write_bytes(raw)
    assert not crashes, crashes[:5]
    assert not silent, silent[:5]
    assert refused + harmless == 1000 and refused > 500  # the rest hit bytes HDF5 never reads (free space, padding)


def test_a_damaged_embeddings_file_is_one_line_for_the_cli(tmp_path, rng):
    x = rng.standard_normal((40, 12)).astype(np.float32)
    e = write_embeddings(tmp_path / "e.h5", x, (x[:, None] + rng.standard_normal((40, 2, 12))).astype(np.float32))
    raw = e.path.read_bytes()
    for _ in range(15):
        _, damaged = mutate(raw, rng)
        e.path.write_bytes(damaged)
        r = run("-q", "fit-probe", e.path, tmp_path / f"p{_}", "--bits", 16, "--epochs", 1)
        assert r.exit_code in (0, 2, 3) and isinstance(r.exception, SystemExit) or r.exit_code == 0, (
            r.output,
            r.exception,
        )
        assert "Traceback" not in r.output


# -- the small ones ------------------------------------------------------------------------------


def test_query_output_escapes_tabs_and_newlines_in_names(tmp_path, clusters, small_index):
    names = [f"odd\tname\n{i}" for i in range(5)]
    q = write_embeddings(tmp_path / "q.h5", clusters.embeddings(slice(0, 5)), names=names)
    r = run("query", small_index.path, "--embeddings", q.path, "-k", 3)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 1 + 5 * 3 and all(len(ln.split("\t")) == 6 for ln in lines)
    assert lines[1].startswith("odd\\tname\\n0\t1\t")
    r = run("query", small_index.path, "--embeddings", q.path, "-k", 1, "--json")
    assert json.loads(r.output)[0]["query"] == names[0]


def test_index_and_probe_folders_follow_the_umask(tmp_path, clusters):
    old = os.umask(0o022)
    try:
        fit_probe(clusters, FitConfig(method="lsh", bits=16), progress=False).save(tmp_path / "p")
        build_index(clusters, tmp_path / "p", tmp_path / "i")
    finally:
        os.umask(old)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "i").stat().st_mode & 0o777 == 0o755


def test_quiet_hides_chatter_not_warnings_about_data(tmp_path, clusters):
    def hashindex(*args):
        return subprocess.run(
            [sys.executable, "-m", "hashindex", *map(str, args)], env=ENV, capture_output=True, text=True, timeout=300
        )

    r = hashindex("-q", "fit-probe", clusters.path, tmp_path / "p", "--method", "lsh", "--bits", 16)
    assert r.returncode == 0 and "wrote" not in r.stdout + r.stderr
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (40, 30), (200, 50, 10)).save(d / "a.png")
    (d / "b.png").write_bytes(b"not an image")
    r = hashindex(
        "-q", "embed", d, tmp_path / "f.h5", "--image-size", 32, "--device", "cpu", "--max-failures", 1, "--workers", 0
    )
    assert r.returncode == 0, r.stderr
    assert "cannot decode b.png" in r.stderr  # a warning about the data, and the summary of failures
    assert "1 of 2 images could not be decoded" in r.stdout


def test_evaluate_footer_names_the_ranking(tmp_path, clusters, small_index):
    q = write_embeddings(tmp_path / "q.h5", clusters.embeddings(slice(0, 20)), labels=clusters.labels()[:20])
    r = run("evaluate", small_index.path, q.path, "--topk", 10, "--rerank", 2)
    assert r.exit_code == 0, r.output
    assert "rerank-float-2" in r.output.splitlines()[-1] and "Hamming ranking" not in r.output
