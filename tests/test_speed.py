"""The bench's pipeline-speed section and memory figures: present, positive, ratios consistent with
the raw figures, faiss's sizes equal to code_size × n (no timing is asserted)."""

import json
import math

import faiss
import numpy as np
import pytest
import torch
from helpers import run_cli, write_embeddings

from hashindex.backbone.model import load_backbone
from hashindex.cli.main import cli
from hashindex.core.config import FitConfig, default
from hashindex.core.errors import InputError
from hashindex.measure.bench import BenchConfig, run_bench
from hashindex.measure.bench_memory import RSS_RESOLUTION, faiss_sizes, flat_memory
from hashindex.measure.speed import reference_fit, reference_forward

TINY = dict(
    methods=("lsh",),
    bits=(16,),
    topk=20,
    epochs=1,
    nprobes=(1,),
    speed_queries=20,
    latency_queries=5,
    scales=(2000,),
    float_scale=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def real_spec():
    """The packaged EfficientNet-Lite0's spec at 32 px (synthetic embeddings that claim it)."""
    return load_backbone(image_size=32, interpolation="bilinear", device="cpu").spec.to_dict()


def test_pipeline_speed_with_images(tmp_path, real_spec, rng):
    n, d, c = 200, real_spec["num_features"], 4
    y = rng.integers(0, c, n)
    x = (rng.standard_normal((c, d))[y] * 2 + rng.standard_normal((n, d))).astype(np.float32)
    views = (x[:, None] + 0.5 * rng.standard_normal((n, 1, d))).astype(np.float32)
    db = write_embeddings(tmp_path / "db.h5", x, views, np.eye(c, dtype=np.uint8)[y], spec=real_spec)
    r = run_bench(db, db, tmp_path / "rep", BenchConfig(**TINY, images="fashion-mnist", images_limit=6), progress=False)
    ps = json.loads((tmp_path / "rep" / "report.json").read_text())["pipeline_speed"]
    assert ps == json.loads(json.dumps(r["pipeline_speed"])) and ps["device"] == "cpu" and "cpu" in ps["device_name"]
    e = ps["embed"]
    h, ref = e["hashindex"], e["reference"]
    assert e["images"] == 6 and e["views"] == 1 and e["image_size"] == 32
    assert h["passes"] == ref["passes"] == 6 * 2
    assert h["seconds"] > 0 and ref["seconds"] > 0 and h["wall_seconds"] >= h["seconds"]
    assert h["passes_per_s"] == pytest.approx(h["passes"] / h["seconds"])
    assert e["ratio"] == pytest.approx(h["passes_per_s"] / ref["passes_per_s"])
    f = ps["fit"]
    assert (
        f["bits"] == 16
        and f["rows"] == n
        and f["views"] == 2
        and f["epochs"] == 1
        and f["steps"] == math.ceil(n / FitConfig().batch_size)
    )
    assert f["hashindex"]["seconds"] > 0 and f["ratio"] == pytest.approx(
        f["reference"]["seconds"] / f["hashindex"]["seconds"]
    )
    for kind in ("embeddings", "image"):
        q = ps["query"][kind]
        assert (
            q["seconds"] > 0
            and q["reference_seconds"] > 0
            and q["ratio"] == pytest.approx(q["reference_seconds"] / q["seconds"])
        )
    md = (tmp_path / "rep" / "report.md").read_text()
    sec = md[md.index("Pipeline speed") : md.index("# Memory")]
    assert "not measured" not in sec and len([ln for ln in sec.splitlines() if ln.endswith("x |")]) == 4
    for ratio in (e["ratio"], f["ratio"], ps["query"]["embeddings"]["ratio"], ps["query"]["image"]["ratio"]):
        assert f"| {ratio:.2f}x |" in sec


def test_reference_loops_do_the_same_work_as_hashindex(clusters, monkeypatch):
    bb = load_backbone(image_size=32, device="cpu")
    batches, forward = [], bb.model.forward_features
    monkeypatch.setattr(bb.model, "forward_features", lambda x: batches.append(tuple(x.shape)) or forward(x))
    assert reference_forward(bb, passes=5, batch_size=2) > 0
    assert batches == [(2, 3, 32, 32)] * 3 + [(1, 3, 32, 32)]  # a warm-up batch, then 2 + 2 + 1 passes
    steps, step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    views = np.stack([clusters.embeddings(), clusters.view(0)], axis=1)  # 800 rows: 4 batches of at most 256
    assert reference_fit(views, FitConfig(bits=16, device="cpu"), epochs=2) > 0
    assert len(steps) == 2 * math.ceil(clusters.n / FitConfig().batch_size)


def test_faiss_sizes_equal_code_size_times_n(rng):
    for bits, n in ((16, 1000), (64, 3000)):
        fi = faiss.IndexBinaryFlat(bits)
        fi.add(rng.integers(0, 256, (n, bits // 8), dtype=np.uint8))
        s = faiss_sizes(fi)
        assert s["code_bytes_per_item"] * n == fi.code_size * n == bits // 8 * n
        assert s["index_bytes_per_item"] * n == pytest.approx(len(faiss.serialize_index_binary(fi)))


def test_rss_growth_measured_in_a_fresh_process_or_said_below_resolution(rng):
    n, bits = 1_000_000, 64  # 8 MB of codes: well above the reading's noise
    fi = faiss.IndexBinaryFlat(bits)
    fi.add(rng.integers(0, 256, (n, bits // 8), dtype=np.uint8))
    m = flat_memory(fi, n, bits, 0, rss_min_items=n)
    assert m["ram_note"] == "fresh process" and bits / 8 <= m["ram_bytes_per_item"] <= 1.1 * bits / 8
    small = faiss.IndexBinaryFlat(16)
    small.add(rng.integers(0, 256, (1000, 2), dtype=np.uint8))
    s = flat_memory(small, 1000, 16, 0, rss_min_items=0)  # 2 kB: under the reading's resolution
    assert s["ram_bytes_per_item"] is None and s["ram_note"].startswith("below resolution") and RSS_RESOLUTION > 2000
    assert flat_memory(small, 1000, 16, 0, rss_min_items=10**6)["ram_note"].startswith("not measured")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reference_loops_on_cuda(clusters):
    bb = load_backbone(image_size=32, device="cuda")
    assert reference_forward(bb, passes=300, batch_size=128) > 0
    views = np.stack([clusters.embeddings(), clusters.view(0)], axis=1)
    assert reference_fit(views, FitConfig(bits=16, device="cuda"), epochs=2) > 0


def test_bad_images_fail_before_the_long_part(tmp_path, clusters):
    with pytest.raises(InputError, match="does not exist"):
        run_bench(
            clusters, clusters, tmp_path / "a", BenchConfig(**TINY, images=str(tmp_path / "nope")), progress=False
        )
    with pytest.raises(InputError, match="randomly initialised"):  # no backbone to embed them with
        run_bench(clusters, clusters, tmp_path / "b", BenchConfig(**TINY, images="fashion-mnist"), progress=False)
    with pytest.raises(InputError, match="images-limit"):
        BenchConfig(images_limit=0).validate()
    r = run_cli(
        "bench",
        clusters.path,
        clusters.path,
        "-o",
        tmp_path / "c",
        "--images",
        tmp_path / "nope",
        "--images-limit",
        4,
        ok=False,
    )
    assert r.exit_code == 2 and "does not exist" in r.output
    assert (
        f"[default: {default(BenchConfig, 'images_limit')}]"
        in next(p for p in cli.commands["bench"].params if p.name == "images_limit").help
    )
