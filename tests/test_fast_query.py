"""The fast paths against their references: the HashCoder in NumPy against the torch module, the
eval view without torch against the torch one, the backbone's ONNX export against torch, JPEG
draft decoding against full decoding, and a query by image that never imports torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from hashindex.backbone import onnx_runtime as onnx_backbone
from hashindex.backbone.augment import eval_view
from hashindex.backbone.model import load_backbone
from hashindex.backbone.preprocess import base_size, eval_view_np, to_base
from hashindex.core.config import EmbedConfig, FitConfig
from hashindex.core.errors import InputError, IntegrityError
from hashindex.embedding.run import embed
from hashindex.embedding.sources import decode_image, open_source
from hashindex.probe.artifact import Probe
from hashindex.probe.hashcoder import HashCoder
from hashindex.store.reader import open_embeddings

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def lite0():
    return load_backbone(image_size=SIZE, interpolation="bilinear", device="cpu")


def photo(rng, h, w) -> np.ndarray:
    """A smooth random colour image (JPEG-friendly, like a photo) of h x w."""
    small = rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("arch", ["small", "large"])
def test_numpy_hashcoder_equals_the_torch_module(arch, rng):
    torch.manual_seed(0)
    m = HashCoder(24, 32, arch).eval()
    with torch.no_grad():  # running statistics away from (0, 1), so the BatchNorm matters
        bn = m.net[-1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-0.2, 0.2)
    tensors = {k: v.numpy() for k, v in m.state_dict().items()}
    probe = Probe("crovca", 32, 24, {"hashcoder": arch}, tensors=tensors)
    x = (rng.standard_normal((500, 24)) * 3).astype(np.float32)
    with torch.inference_mode():
        ref = m(torch.from_numpy(x)).numpy()
    got = probe.logits(x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (500, 32)
    far = np.abs(ref) > 1e-4  # a code bit can only differ where the logit is float noise away from 0
    assert np.array_equal((got > 0)[far], (ref > 0)[far])


def test_eval_view_without_torch_equals_the_torch_one(rng, lite0):
    spec = lite0.spec
    base = np.stack([to_base(photo(rng, 70, 50), base_size(spec), "bilinear") for _ in range(3)])
    ref = eval_view(torch.from_numpy(base).permute(0, 3, 1, 2), spec).numpy()
    np.testing.assert_allclose(eval_view_np(base, spec), ref, rtol=0, atol=1e-6)


def test_onnx_export_gives_torch_features_and_is_cached(lite0, rng):
    spec = lite0.spec
    ob = onnx_backbone.load_onnx(spec) or onnx_backbone.export_onnx(lite0)
    x = eval_view(
        torch.from_numpy(
            np.stack([to_base(photo(rng, 60, 60), base_size(spec), "bilinear") for _ in range(5)])
        ).permute(0, 3, 1, 2),
        spec,
    )
    ref = lite0.features(x).numpy()
    got = ob.features(x).numpy()
    assert np.abs(got - ref).max() <= onnx_backbone.TOLERANCE * np.abs(ref).max()
    record = json.loads(ob.path.with_suffix(".json").read_text())
    assert (
        record["max_rel_diff"] <= onnx_backbone.TOLERANCE
        and record["identity"]["weights_sha256"] == spec.weights_sha256
    )
    again = onnx_backbone.load_onnx(spec)  # from the cache
    assert again is not None and again.path == ob.path
    assert onnx_backbone.with_runtime(lite0, "torch") is lite0
    assert isinstance(onnx_backbone.with_runtime(lite0, "auto"), onnx_backbone.OnnxBackbone)
    one = onnx_backbone.with_runtime(lite0, "onnx", threads=1)  # a Ray actor's slice of the cores
    assert one.session.get_session_options().intra_op_num_threads == 1 and one.path == ob.path
    np.testing.assert_allclose(one.features(x).numpy(), got, rtol=1e-5, atol=1e-6)
    # a corrupt file or a record of another backbone is refused, never used
    data = ob.path.read_bytes()
    try:
        ob.path.write_bytes(data[:-10] + b"0123456789")
        with pytest.raises(IntegrityError, match="sha256"):
            onnx_backbone.load_onnx(spec)
    finally:
        ob.path.write_bytes(data)
    other = type(spec)(**{**spec.to_dict(), "num_features": 7})
    assert onnx_backbone.cache_path(other) != ob.path
    assert onnx_backbone.cache_path(type(spec)(**{**spec.to_dict(), "weights_sha256": None})) is None


def test_onnx_runtime_refuses_a_gpu_and_unhashed_weights(lite0):
    gpu = type(lite0)(lite0.model, lite0.spec, torch.device("cuda"))
    with pytest.raises(InputError, match="CPU"):
        onnx_backbone.with_runtime(gpu, "onnx")
    assert onnx_backbone.with_runtime(gpu, "auto") is gpu
    hub = type(lite0)(lite0.model, type(lite0.spec)(**{**lite0.spec.to_dict(), "weights_sha256": None}), lite0.device)
    with pytest.raises(InputError, match="sha256"):
        onnx_backbone.with_runtime(hub, "onnx")


def test_embed_with_onnx_runtime_equals_torch(tmp_path):
    src = open_source("fashion-mnist", split="test", limit=40)
    cfg = dict(image_size=SIZE, views=1, batch_size=16)
    embed(src, tmp_path / "t.h5", EmbedConfig(**cfg, runtime="torch"), progress=False)
    embed(src, tmp_path / "o.h5", EmbedConfig(**cfg, runtime="onnx"), progress=False)
    t, o = open_embeddings(tmp_path / "t.h5", verify=True), open_embeddings(tmp_path / "o.h5", verify=True)
    assert t.attrs["runtime"] == "torch" and o.attrs["runtime"] == "onnxruntime"
    scale = np.abs(t.embeddings()).max()
    assert np.abs(o.embeddings() - t.embeddings()).max() <= onnx_backbone.TOLERANCE * scale
    assert np.abs(o.views() - t.views()).max() <= onnx_backbone.TOLERANCE * scale


def test_jpeg_draft_decodes_at_a_reduced_scale_that_covers_the_base(tmp_path, rng, lite0):
    img = photo(rng, 1200, 1600)
    path = tmp_path / "p.jpg"
    Image.fromarray(img).save(path, quality=90)
    full = decode_image(str(path))
    s0 = base_size(lite0.spec)  # 36 px: the 1/8 scale (150 x 200) still covers it
    draft = decode_image(str(path), s0)
    assert full.shape == (1200, 1600, 3) and draft.shape == (150, 200, 3)
    assert decode_image(str(path), 700).shape == (1200, 1600, 3)  # 1/2 would be 600 < 700
    assert decode_image(str(path), 500).shape == (600, 800, 3)
    png = tmp_path / "p.png"
    Image.fromarray(img).save(png)
    assert decode_image(str(png), s0).shape == (1200, 1600, 3)  # other formats decode in full
    # the base images (what the backbone sees) agree within a few grey levels
    a, b = to_base(full, s0, "bilinear").astype(int), to_base(draft, s0, "bilinear").astype(int)
    assert np.abs(a - b).mean() < 3


def _index(tmp_path) -> Path:
    src = open_source("fashion-mnist", split="train", limit=120)
    embed(src, tmp_path / "db.h5", EmbedConfig(image_size=SIZE, interpolation="bilinear", views=1), progress=False)
    run_cli("fit-probe", tmp_path / "db.h5", tmp_path / "p", "--bits", 32, "--epochs", 1)
    run_cli("build", tmp_path / "db.h5", tmp_path / "p", tmp_path / "i")
    q = open_source("fashion-mnist", split="test", limit=2)
    for i in range(2):
        Image.fromarray(q.load(i)).save(tmp_path / f"q{i}.png")
    return tmp_path / "i"


def test_query_by_image_without_torch_equals_the_torch_answer(tmp_path):
    index = _index(tmp_path)  # embedding on the CPU with the default runtime exported the backbone
    images = [tmp_path / "q0.png", tmp_path / "q1.png"]
    assert onnx_backbone.cache_path(open_embeddings(tmp_path / "db.h5").backbone).is_file()
    ref = json.loads(run_cli("query", index, *images, "-k", 5, "--json", "--runtime", "torch").output)
    code = (
        "import sys\nfrom hashindex.cli.main import cli\n"
        "try:\n    cli(['-q', 'query', *sys.argv[1:], '-k', '5', '--json'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(index), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [[h["id"] for h in q["results"]] for q in got] == [[h["id"] for h in q["results"]] for q in ref]
    assert [[h["distance"] for h in q["results"]] for q in got] == [[h["distance"] for h in q["results"]] for q in ref]


def test_fit_probe_codes_come_from_numpy_at_build_and_query(tmp_path, clusters):
    """A probe fitted by torch encodes the same codes through its NumPy forward."""
    from hashindex.probe.fit import fit_probe

    probe = fit_probe(clusters, FitConfig(bits=16, epochs=1), progress=False)
    x = clusters.embeddings()
    with torch.inference_mode():
        ref = probe.module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(probe.logits(x), ref, rtol=1e-4, atol=1e-5)
