"""Safe loading: random damage to an index folder is always refused cleanly (never a crash, never a
silent load); edited manifests name both sides; no pickle anywhere in the code; a pickle-bearing
checkpoint given to the CLI is refused without running it."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import mutate as _mutate
from helpers import write_embeddings

from hashindex import build_index
from hashindex.core.config import FitConfig, IndexConfig
from hashindex.core.errors import HashIndexError, IntegrityError, MismatchError
from hashindex.index.load import load_index
from hashindex.index.manifest import sealed_bytes
from hashindex.probe.fit import fit_probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["flat", "ivf", "mih"])
def index_dir(request, tmp_path_factory):
    """A tiny CroVCA index (48 items, 16-d, 32 bits) of each kind with files of its own (flat,
    ivf, mih): every file is a few KB."""
    d = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((48, 16)).astype(np.float32)
    views = (x[:, None] + 0.3 * rng.standard_normal((48, 2, 16))).astype(np.float32)
    labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 48)]
    emb = write_embeddings(d / "e.h5", x, views, labels)
    fit_probe(emb, FitConfig(bits=32, epochs=1, batch_size=16), progress=False).save(d / "probe")
    cfg = {
        "flat": IndexConfig("flat"),
        "ivf": IndexConfig("ivf", nlist=1, nprobe=1),
        "mih": IndexConfig("mih", tables=4),  # its table files are read (and damaged) too
    }[request.param]
    build_index(emb, d / "probe", d / "index", cfg)
    return d / "index"


def test_1000_random_mutations_are_all_refused_cleanly(index_dir):
    load_index(index_dir)  # the intact folder loads
    files = sorted(p for p in index_dir.rglob("*") if p.is_file())
    assert {p.relative_to(index_dir).as_posix() for p in files} >= {
        "manifest.json",
        "index.faiss",
        "items.h5",
        "probe/probe.json",
        "probe/weights.safetensors",
    }
    if load_index(index_dir).kind == "mih":
        assert {p.name for p in files} >= {"mih_order.npy", "mih_offsets.npy", "mih_words.npy"}
    original = {p: p.read_bytes() for p in files}
    assert sum(map(len, original.values())) < 64_000
    rng = np.random.default_rng(2024)
    crashes, silent, refused = [], [], {}
    for _ in range(500):  # x3 params (flat, ivf, mih) = 1,500 mutations
        p = files[int(rng.integers(len(files)))]
        what, damaged = _mutate(original[p], rng)
        p.write_bytes(damaged)
        try:
            load_index(index_dir)
            silent.append(f"{p.name}: {what}")
        except HashIndexError as e:
            refused[type(e).__name__] = refused.get(type(e).__name__, 0) + 1
            assert str(e) and "\n" not in str(e).strip()
        except Exception as e:
            crashes.append(f"{p.name}: {what}: {type(e).__name__}: {e}")
        finally:
            p.write_bytes(original[p])
    assert not crashes, crashes[:5]
    assert not silent, silent[:5]
    assert sum(refused.values()) == 500
    load_index(index_dir)


def test_damage_behind_a_resealed_manifest_never_crashes_the_readers(index_dir, tmp_path):
    """Mutations whose hashes are written back into a re-sealed manifest get past the checksums,
    so the readers (JSON, safetensors, faiss, HDF5) see the damage itself: they may load (the
    damage made another valid file) or refuse, but never raise anything else."""
    _resealed_fuzz(index_dir, tmp_path, 60, seed=11)


@pytest.mark.slow
def test_damage_behind_a_resealed_manifest_many(index_dir, tmp_path):
    _resealed_fuzz(index_dir, tmp_path, 1000, seed=12)


def _resealed_fuzz(index_dir, tmp_path, count: int, seed: int) -> None:
    from hashindex.core.spec import sha256_file
    from hashindex.probe.artifact import probe_hash

    d = _copy(index_dir, tmp_path)
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.name != "manifest.json")
    original = {p: p.read_bytes() for p in files}
    manifest = (d / "manifest.json").read_bytes()
    rng = np.random.default_rng(seed)
    crashes = []
    for _ in range(count):
        p = files[int(rng.integers(len(files)))]
        what, damaged = _mutate(original[p], rng)
        p.write_bytes(damaged)
        m = json.loads(manifest)
        rel = p.relative_to(d).as_posix()
        m["files"][rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        m["probe"]["sha256"] = probe_hash(d / "probe")
        (d / "manifest.json").write_bytes(sealed_bytes(m))
        try:
            load_index(d)
        except HashIndexError:
            pass
        except Exception as e:
            crashes.append(f"{rel}: {what}: {type(e).__name__}: {e}")
        finally:
            p.write_bytes(original[p])
            (d / "manifest.json").write_bytes(manifest)
    assert not crashes, crashes[:5]


def _copy(index_dir, tmp_path):
    import shutil

    shutil.copytree(index_dir, tmp_path / "idx")
    return tmp_path / "idx"


def _edit_manifest(d: Path, edit, reseal: bool) -> None:
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_bytes(
        sealed_bytes(m) if reseal else (json.dumps(m, indent=2, sort_keys=True) + "\n").encode()
    )


def test_edited_manifests_are_refused_naming_both_sides(index_dir, tmp_path):
    d = _copy(index_dir, tmp_path)
    ok = (d / "manifest.json").read_bytes()

    def nprobe_or_date(m):
        m["created"] = "2000-01-01T00:00:00Z"

    _edit_manifest(d, nprobe_or_date, reseal=False)  # a harmless-looking edit is still an edit
    with pytest.raises(IntegrityError, match="manifest.json does not match its own sha256"):
        load_index(d)
    _edit_manifest(d, nprobe_or_date, reseal=True)  # the same edit, re-sealed, is accepted
    assert load_index(d).manifest.created.startswith("2000")

    (d / "manifest.json").write_bytes(ok)
    _edit_manifest(d, lambda m: m.__setitem__("ntotal", m["ntotal"] + 1), reseal=True)
    with pytest.raises(IntegrityError, match=r"holds 48 codes of 32 bits, the manifest says 49 of 32"):
        load_index(d)

    (d / "manifest.json").write_bytes(ok)
    _edit_manifest(d, lambda m: m["backbone"].__setitem__("num_features", 1280), reseal=True)
    with pytest.raises(MismatchError, match="16-d embeddings.*1280-d"):
        load_index(d)

    (d / "manifest.json").write_bytes(ok)
    _edit_manifest(d, lambda m: m["backbone"].__setitem__("image_size", 224), reseal=True)
    with pytest.raises(MismatchError, match="224"):
        load_index(d)

    (d / "manifest.json").write_bytes(ok)
    _edit_manifest(d, lambda m: m.pop("manifest_sha256"), reseal=False)
    with pytest.raises(IntegrityError, match="manifest_sha256"):
        load_index(d)

    (d / "manifest.json").write_bytes(ok)
    _edit_manifest(d, lambda m: m["files"].__setitem__("../outside", {"sha256": "0" * 64, "size": 1}), reseal=True)
    with pytest.raises(IntegrityError, match="outside the folder"):
        load_index(d)


def test_swapped_probe_is_refused(index_dir, tmp_path):
    """A probe from another fit, with the manifest re-sealed around it: the probe hash catches it."""
    import shutil

    from hashindex.core.spec import sha256_file

    d = _copy(index_dir, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(d / "probe", other)
    doc = json.loads((other / "probe.json").read_text())
    doc["config"]["seed"] = 99
    (other / "probe.json").write_text(json.dumps(doc))
    shutil.copyfile(other / "probe.json", d / "probe" / "probe.json")

    def refile(m):
        rel = "probe/probe.json"
        m["files"][rel] = {"sha256": sha256_file(d / rel), "size": (d / rel).stat().st_size}

    _edit_manifest(d, refile, reseal=True)
    with pytest.raises(IntegrityError, match="probe sha256"):
        load_index(d)


# -- no pickle -------------------------------------------------------------------------------

_PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _library_sources():
    return sorted((REPO / "hashindex").rglob("*.py")) + sorted((REPO / "cli").rglob("*.py"))


def test_no_pickle_anywhere_in_the_code():
    problems = []
    for path in _library_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
                problems.append(f"{where}: from {node.module} import")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in ("read_pickle", "to_pickle", "loads")
                and isinstance(node.value, ast.Name)
                and node.value.id in _PICKLE_MODULES
            ):
                problems.append(f"{where}: {node.value.id}.{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                kw = {k.arg: k.value for k in node.keywords}
                if owner == "torch" and not (
                    isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                ):
                    problems.append(f"{where}: torch.load without weights_only=True")
                if owner in ("np", "numpy") and not (
                    isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False
                ):
                    problems.append(f"{where}: np.load without allow_pickle=False")
            elif (
                isinstance(node, ast.keyword)
                and node.arg == "allow_pickle"
                and not (isinstance(node.value, ast.Constant) and node.value.value is False)
            ):
                problems.append(f"{where}: allow_pickle not False")
    assert not problems, problems
    assert len(_library_sources()) > 10  # the scan did look at the code


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_cli_refuses_a_pickle_bearing_checkpoint_and_runs_no_code(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from hashindex.cli.main import cli

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30), (200, 50, 10)).save(tmp_path / "imgs" / "a.png")
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    with open(ckpt, "wb") as fh:
        pickle.dump({"conv_stem.weight": _Evil(str(marker))}, fh)
    r = CliRunner().invoke(
        cli,
        [
            "-q",
            "embed",
            str(tmp_path / "imgs"),
            str(tmp_path / "e.h5"),
            "--weights",
            str(ckpt),
            "--image-size",
            "32",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert (
        line.startswith("error: refusing to load")
        and "weights_only" in line
        and "\n" not in line
        and "Traceback" not in r.output
    )
    assert not marker.exists()
    assert not (tmp_path / "e.h5").exists()
