"""The distribution: `pip wheel` builds the package with no warning from its own configuration;
the wheel holds every module (the top-level `cli/` as `hashindex.cli`), the service's page files
and the LICENSE, with SPDX license metadata; installed on its own into a fresh virtual
environment, its `hashindex` command runs a query on a small index, from the wheel's files.

The build runs on a copy of the files it reads (so the working tree gets no build/ folder and no
stale file of an earlier build can slip into the wheel), without build isolation: the project's
environment provides setuptools (pip checks it meets `build-system.requires`), nothing is
downloaded. The fresh environment sees the project's dependencies (torch, faiss, ...) through a
.pth file naming this environment's site-packages, where only plain paths count: the .pth files
there, the editable install of hashindex among them, are not run.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_embeddings

import hashindex

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
STATIC = ROOT / "hashindex" / "serve" / "static"

# A line of the build's output that reports a problem: warnings of setuptools and distutils
# ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "warning: build_py: ..."), pip's
# "WARNING:" lines and deprecation notices.
WARNING = re.compile(r"warning|deprecat", re.IGNORECASE)
# setuptools' own lines that name files, whose paths may hold those words.
FILE_LINE = re.compile(r"^(copying|adding|creating|writing|reading|removing|changing mode) ")
# Warnings of the machine, not of the project: pip's configuration names index folders that
# some machines lack.
ENVIRONMENT = [re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$")]


def _clean_env() -> dict[str, str]:
    """The environment for the build and the fresh environment's commands: no PYTHONPATH (the
    working tree must not be importable) and byte-compiling allowed (with PYTHONDONTWRITEBYTECODE
    distutils warns "byte-compiling is disabled", a setting of the machine)."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE", "PYTHONSTARTUP"):
        env.pop(name, None)
    return env


def _sources(dst: Path) -> None:
    """Copy what the build reads: pyproject.toml, the readme, the license files and the folders
    of the packages (`tool.setuptools.package-dir`), without caches."""
    project = PYPROJECT["project"]
    files = ["pyproject.toml", project["readme"], *project["license-files"], "MANIFEST.in", "setup.py", "setup.cfg"]
    for name in files:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dst / name)
    for folder in sorted({Path(d).parts[0] for d in SETUPTOOLS["package-dir"].values()}):
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel path, pip's verbose build output)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "dist"
    src.mkdir()
    _sources(src)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(out), "-v"]
    cmd += ["--no-build-isolation", "--check-build-dependencies", "--no-index"]
    r = subprocess.run(cmd, cwd=tmp, env=_clean_env(), capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    wheels = list(out.glob("hashindex-*.whl"))
    assert len(wheels) == 1, (wheels, log[-2000:])
    return wheels[0], log


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """A fresh virtual environment with the wheel installed in it (no dependencies; those come
    from this environment's site-packages, hashindex's editable install excluded)."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(built[0])]
    r = subprocess.run(cmd, cwd=env_dir, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # after the install, so that pip sees no other hashindex to replace
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([python, "-c", where], cwd=env_dir, env=_clean_env(), text=True).strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_project_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return env_dir, site


def test_build_has_no_warning(built):
    _, log = built
    assert "Successfully built hashindex" in log
    lines = [line.strip() for line in log.splitlines()]
    warnings = [
        line
        for line in lines
        if WARNING.search(line) and not FILE_LINE.match(line) and not any(p.match(line) for p in ENVIRONMENT)
    ]
    assert not warnings, "the build warns:\n" + "\n".join(warnings)


def test_every_package_folder_is_listed():
    """Each folder of hashindex/ is a package of the configuration: those with an __init__.py,
    and folders of data (the page) too, else setuptools leaves them out or warns."""
    folders = {p.parent for p in (ROOT / "hashindex").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    names = {".".join(f.relative_to(ROOT).parts) for f in folders}
    missing = names - set(SETUPTOOLS["packages"])
    assert not missing, f"not in [tool.setuptools] packages: {sorted(missing)}"


def test_wheel_holds_every_module_the_page_and_the_license(built):
    with zipfile.ZipFile(built[0]) as z:
        names = set(z.namelist())
        read = z.read
        # every module, where package-dir puts it (cli/ becomes hashindex/cli/), and no other
        expected = set()
        for package, folder in SETUPTOOLS["package-dir"].items():
            for f in (ROOT / folder).rglob("*.py"):
                if "__pycache__" not in f.parts:
                    expected.add("/".join([*package.split("."), *f.relative_to(ROOT / folder).parts]))
        assert {n for n in names if n.endswith(".py")} == expected
        assert "hashindex/cli/main.py" in names and not any(n.startswith(("cli/", "tests/")) for n in names)

        # the page, byte for byte
        page = sorted(p for p in STATIC.iterdir() if p.is_file())
        assert {p.suffix for p in page} >= {".html", ".js", ".css", ".svg"}
        for p in page:
            assert read(f"hashindex/serve/static/{p.name}") == p.read_bytes()

        # the license, and metadata that declares it by SPDX expression
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        license_text = (ROOT / "LICENSE").read_bytes()
        assert read(f"{info}/licenses/LICENSE") == license_text
        assert license_text.startswith(b"Copyright 2026 The hashindex authors\n")
        assert b"Apache License\n" in license_text and b"Version 2.0, January 2004" in license_text
        meta = email.parser.Parser().parsestr(read(f"{info}/METADATA").decode())
    assert meta["Name"] == "hashindex" and meta["Version"] == hashindex.__version__
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None  # the deprecated free-text field
    classifiers = meta.get_all("Classifier")
    assert classifiers and not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Repository", "Issues"} <= set(urls)
    assert len(meta.get_all("Requires-Dist")) >= len(PYPROJECT["project"]["dependencies"])


def test_installed_wheel_runs_a_query(installed, tmp_path, rng):
    env_dir, site = installed
    python, command = env_dir / "bin" / "python", env_dir / "bin" / "hashindex"
    env = _clean_env()

    # the package, its command line and its page come from the wheel's files
    probe = (
        "import json, sys, importlib.metadata as md, importlib.util, hashindex;"
        "from pathlib import Path;"
        "print(json.dumps({'file': hashindex.__file__, 'cli': importlib.util.find_spec('hashindex.cli.main').origin,"
        "'dist': str(md.distribution('hashindex')._path), 'version': md.version('hashindex'),"
        "'editable': any('__editable__' in m for m in sys.modules)}))"
    )
    r = subprocess.run([python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    where = json.loads(r.stdout)
    package = site / "hashindex"
    assert Path(where["file"]) == package / "__init__.py"
    assert Path(where["cli"]) == package / "cli" / "main.py"
    assert Path(where["dist"]).parent == site and where["version"] == hashindex.__version__
    assert not where["editable"]
    assert (package / "serve" / "static" / "index.html").is_file()
    assert (Path(where["dist"]) / "licenses" / "LICENSE").is_file()

    r = subprocess.run([command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Usage: hashindex" in r.stdout and "query" in r.stdout

    # a query on a small index, built here by the working tree's package
    x = rng.standard_normal((60, 48)).astype(np.float32)
    write_embeddings(tmp_path / "db.h5", x)
    hashindex.fit_probe(tmp_path / "db.h5", tmp_path / "probe", method="itq", bits=32)
    hashindex.build_index(tmp_path / "db.h5", tmp_path / "probe", tmp_path / "index", kind="flat")
    args = ["query", str(tmp_path / "index"), "--embeddings", str(tmp_path / "db.h5"), "-k", "3"]
    r = subprocess.run([command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "query\trank\tid\tname\tlabel\tdistance" and len(lines) == 1 + 60 * 3
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[1] for row in rows[:3]] == ["1", "2", "3"]
    assert all(row[5] == "0" for row in rows[::3])  # each item's nearest code is its own
    # the same answer as the working tree's command line
    assert r.stdout == run_cli(*args).stdout
