"""`embed --ray`: the same file as a single-process run, on a local Ray cluster; crash and resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hashindex.cli.main import cli
from hashindex.core.config import EmbedConfig
from hashindex.embedding.ray_runner import pending_blocks, ray_runner
from hashindex.embedding.run import embed
from hashindex.embedding.sources import open_source
from hashindex.store.reader import open_embeddings
from hashindex.store.resume import partial_path

ray = pytest.importorskip("ray")

N, SIZE = 256, 32
# Arrays equal up to float noise: the same batches go through the same CPU kernels, but in other
# processes with other thread counts (in practice they come out bit-identical).
ATOL = RTOL = 1e-5  # |ray - single| <= ATOL + RTOL * |single|
RUN_SPECIFIC = {"created", "embed_seconds", "device", "runtime"}


def start_local_cluster(cpus: int = 2) -> str:
    """A local Ray cluster on 127.0.0.1; retried, since Ray gives its raylet a fixed 30 s to
    register, which a heavily loaded machine can miss."""
    for attempt in range(3):
        try:
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            return ray.get_runtime_context().gcs_address
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise


@pytest.fixture(scope="module")
def cluster():
    yield start_local_cluster()
    ray.shutdown()


def assert_same_file(a_path, b_path):
    a, b = open_embeddings(a_path, verify=True), open_embeddings(b_path, verify=True)
    assert (a.n, a.dim, a.num_views) == (b.n, b.dim, b.num_views)
    np.testing.assert_allclose(b.embeddings(), a.embeddings(), rtol=RTOL, atol=ATOL)
    if a.num_views:
        np.testing.assert_allclose(b.views(), a.views(), rtol=RTOL, atol=ATOL)
    assert b.names() == a.names() and b.failures() == a.failures()
    np.testing.assert_array_equal(b.source_index(), a.source_index())
    la, lb = a.labels(), b.labels()
    assert (la is None and lb is None) or np.array_equal(la, lb)
    for k in set(a.attrs) | set(b.attrs):
        if k not in RUN_SPECIFIC and k != "checksums":
            assert json.dumps(a.attrs.get(k), default=str) == json.dumps(b.attrs.get(k), default=str), k
    assert b.attrs["device"].startswith("ray:")


def test_pending_blocks_fill_the_gaps_on_the_batch_grid():
    done = [(64, 128, None), (200, 256, None)]
    assert pending_blocks(0, 300, done, 64) == [(0, 64), (128, 192), (192, 200), (256, 300)]
    assert pending_blocks(10, 20, [], 64) == [(10, 20)]


def test_ray_embed_equals_single_process(tmp_path, cluster):
    src = open_source("fashion-mnist", split="train", limit=N)
    cfg = EmbedConfig(image_size=SIZE, views=1, batch_size=32)
    embed(src, tmp_path / "one.h5", cfg, progress=False)
    embed(src, tmp_path / "ray.h5", cfg, progress=False, runner=ray_runner(actors=2))
    assert_same_file(tmp_path / "one.h5", tmp_path / "ray.h5")
    assert not partial_path(tmp_path / "ray.h5").exists()


def test_ray_embed_records_the_same_failures(tmp_path, cluster, rng):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "5.png").write_bytes(b"not a png")
    (root / "b" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = CliRunner().invoke
    base = ["-q", "embed", str(root), "--image-size", str(SIZE), "--batch-size", "8", "--max-failures", "2"]
    assert run(cli, base[:3] + [str(tmp_path / "one.h5")] + base[3:]).exit_code == 0
    r = run(cli, base[:3] + [str(tmp_path / "ray.h5")] + base[3:] + ["--ray", cluster, "--ray-actors", "2"])
    assert r.exit_code == 0, r.output
    assert_same_file(tmp_path / "one.h5", tmp_path / "ray.h5")
    assert len(open_embeddings(tmp_path / "ray.h5").failures()) == 2


def _descendants_named(word: str) -> list[int]:
    """Pids of this test's processes (descendants of this one) whose command line has ``word``."""
    me, found = os.getpid(), []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if word.encode() not in fh.read():
                    continue
            p = pid
            while p > 1:
                with open(f"/proc/{p}/stat") as fh:
                    p = int(fh.read().rsplit(")", 1)[1].split()[1])
                if p == me:
                    found.append(pid)
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.slow  # about 2 minutes: a second Python process joins the cluster, and embeds twice
def test_killed_worker_and_driver_resume_to_the_same_file(tmp_path, cluster, caplog):
    src = open_source("fashion-mnist", split="train", limit=N)
    cfg = EmbedConfig(image_size=SIZE, batch_size=16)
    embed(src, tmp_path / "one.h5", cfg, progress=False)
    out = tmp_path / "ray.h5"
    args = [
        "embed",
        "fashion-mnist",
        str(out),
        "--limit",
        str(N),
        "--image-size",
        str(SIZE),
        "--batch-size",
        "16",
        "--ray",
        cluster,
        "--ray-actors",
        "1",
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "hashindex.cli.main", "-q", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        blocks = []
        while time.monotonic() < deadline and len(blocks) < 3 and driver.poll() is None:
            blocks = sorted(partial_path(out).glob("ray-*.npz")) if partial_path(out).is_dir() else []
            time.sleep(0.05)
        assert len(blocks) >= 3, (
            f"no progress: {driver.poll()} {driver.stderr.read().decode()[-2000:] if driver.poll() is not None else ''}"
        )
        actors = _descendants_named("_EmbedActor")
        assert actors, "no Ray actor process found"
        for pid in actors:
            os.kill(pid, signal.SIGKILL)  # a worker dies mid-run...
        driver.send_signal(signal.SIGKILL)  # ...and so does the driver
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert not out.exists()
    kept = sorted(partial_path(out).glob("ray-*.npz"))
    assert len(kept) >= 3 and len(kept) < N // 16
    with caplog.at_level(logging.INFO, logger="hashindex.embedding.ray_runner"):
        r = CliRunner().invoke(cli, ["-q", *args])
    assert r.exit_code == 0, r.output
    assert any(f"{len(kept)} blocks already done" in m for m in caplog.messages), caplog.messages
    assert_same_file(tmp_path / "one.h5", out)
