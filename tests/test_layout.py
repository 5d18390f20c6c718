"""The shape of the library: what reading files imports, and that the CLI's choices and
defaults are the library's own."""

import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

import hashindex
from hashindex.cli.main import cli
from hashindex.core.config import (
    BENCH_METHODS,
    DEVICES,
    HASHCODER_SIZES,
    INDEX_KINDS,
    METHODS,
    TARGETS,
    EmbedConfig,
    FitConfig,
    IndexConfig,
    default,
)
from hashindex.core.spec import INTERPOLATIONS
from hashindex.probe.artifact import hashcoder_shapes

REPO = Path(__file__).resolve().parents[1]


def _no_torch(code: str, *args) -> str:
    """Run ``code`` in a fresh interpreter and return its output; it fails if torch (or timm)
    got imported."""
    check = "\nimport sys\nbad = [m for m in ('torch', 'timm') if m in sys.modules]\nassert not bad, bad\nprint('ok')"
    r = subprocess.run(
        [sys.executable, "-c", code + check, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_reading_an_embeddings_file_does_not_import_torch(clusters):
    out = _no_torch(
        "import sys\nfrom hashindex.store.reader import open_embeddings\n"
        "e = open_embeddings(sys.argv[1], verify=True)\nprint(e.n, e.embeddings().shape, e.backbone.model)",
        clusters.path,
    )
    assert out.startswith(f"{clusters.n} ({clusters.n}, {clusters.dim})")


def test_loading_an_index_and_searching_by_codes_does_not_import_torch(tmp_path, clusters):
    hashindex.fit_probe(clusters, tmp_path / "p", FitConfig(bits=16, epochs=1))
    ix = hashindex.build_index(clusters, tmp_path / "p", tmp_path / "i")  # the default kind, auto
    all_codes = ix.snapshot.codes
    codes = all_codes[:3]
    np.save(tmp_path / "q.npy", codes)
    np.save(tmp_path / "x.npy", clusters.embeddings()[:3])
    out = _no_torch(
        "import sys, numpy as np\nimport hashindex\nfrom hashindex.index.load import load_index\n"
        "from hashindex.search.ranking import hamming_search\n"
        "i = hashindex.open_index(sys.argv[1])\nd, ids = hamming_search(i.snapshot.index, np.load(sys.argv[2]), 1)\n"
        "print(ids.ravel().tolist(), d.ravel().tolist(), len(load_index(sys.argv[1]).items()['names']))\n"
        "r = i.search(np.load(sys.argv[3]), k=1, device='cpu')\n"
        "print(r.ids.ravel().tolist(), r.distances.ravel().tolist())",
        tmp_path / "i",
        tmp_path / "q.npy",
        tmp_path / "x.npy",
    )
    want = [int(np.flatnonzero((all_codes == c).all(1))[0]) for c in codes]  # first id with that code
    assert out.startswith(f"{want} [0, 0, 0] {clusters.n}\n{want} [0, 0, 0]\n")  # by codes, then by embeddings


def test_help_does_not_import_torch():
    _no_torch("from hashindex.cli.main import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass")


def _option(command: str, name: str) -> click.Option:
    return next(p for p in cli.commands[command].params if p.name == name)


@pytest.mark.parametrize(
    "command, name, choices",
    [
        ("embed", "interpolation", INTERPOLATIONS),
        ("embed", "device", DEVICES),
        ("fit-probe", "method", METHODS),
        ("fit-probe", "hashcoder", HASHCODER_SIZES),
        ("build", "kind", INDEX_KINDS),
        ("bench", "hashcoder", HASHCODER_SIZES),
        ("fit-probe", "targets", TARGETS),
        ("bench", "targets", TARGETS),
    ],
)
def test_cli_choices_are_the_librarys(command, name, choices):
    assert tuple(_option(command, name).type.choices) == tuple(choices)


def test_cli_help_states_the_library_defaults():
    assert f"[default: {default(FitConfig, 'bits')}]" in _option("fit-probe", "bits").help
    assert default(FitConfig, "epochs") is None and "[default: automatic" in _option("fit-probe", "epochs").help
    assert f"[default: {default(FitConfig, 'min_steps')}]" in _option("fit-probe", "min_steps").help
    assert f"[default: {default(FitConfig, 'targets')}]" in _option("fit-probe", "targets").help
    assert f"[default: {default(EmbedConfig, 'views')}]" in _option("embed", "views").help
    assert f"[default: {default(IndexConfig, 'kind')}]" in _option("build", "kind").help
    assert ",".join(BENCH_METHODS) in _option("bench", "methods").help


def test_cli_list_options_are_parsed_by_a_param_type():
    from click.testing import CliRunner

    r = CliRunner().invoke(cli, ["bench", "a.h5", "b.h5", "-o", "x", "--bits", "16,x"])
    assert r.exit_code == 2 and "comma-separated" in r.output
    r = CliRunner().invoke(cli, ["bench", "a.h5", "b.h5", "-o", "x", "--methods", "crovca,nope"])
    assert r.exit_code == 2 and "'nope' is not one of" in r.output


@pytest.mark.parametrize("arch", HASHCODER_SIZES)
def test_probe_shape_table_matches_the_hashcoder(arch):
    from hashindex.probe.hashcoder import HashCoder

    m = HashCoder(24, 16, arch)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == hashcoder_shapes(24, 16, arch)
