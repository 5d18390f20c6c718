"""`finetune`: only adapters and HashCoder train, the outputs plug into embed/build/query, tuned and
untuned artifacts never mix, and a run killed with SIGKILL resumes to the same files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tinyvit
import torch
from helpers import run_cli as run
from safetensors.torch import load_file

import hashindex.probe.finetune as ft
from hashindex.backbone.lora import LoRAConfig, load_adapter
from hashindex.core.errors import InputError
from hashindex.embedding.sources import open_source
from hashindex.probe.artifact import load_probe
from hashindex.probe.finetune import FinetuneConfig, finetune
from hashindex.probe.hashcoder import HashCoder

REPO = Path(__file__).resolve().parents[1]
N = 24


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny random ViT fine-tuned for 3 epochs (1 HashCoder-only) on 24 Fashion-MNIST images.

    Returns the folder, the weights file, and the backbone object the run trained (captured)
    with a copy of its state before training.
    """
    d = tmp_path_factory.mktemp("ft")
    weights = tinyvit.write_weights(d / "vit.safetensors")
    seen = {}

    def capture(*a, **kw):
        bb = ft_load(*a, **kw)
        seen["bb"], seen["before"] = bb, {k: v.clone() for k, v in bb.model.state_dict().items()}
        return bb

    ft_load = ft.backbone_for
    ft.backbone_for = capture
    try:
        cfg = FinetuneConfig(
            model=tinyvit.NAME,
            weights=weights,
            image_size=32,
            bits=16,
            epochs=3,
            batch_size=8,
            lora=LoRAConfig(rank=4, alpha=4.0),
            adapter_lr=1e-2,
            device="cpu",
            seed=0,
        )
        summary = finetune(open_source("fashion-mnist", limit=N), d / "out", cfg, progress=False)
    finally:
        ft.backbone_for = ft_load
    return d, weights, seen, summary


def test_only_adapters_and_hashcoder_change(tuned):
    d, _, seen, summary = tuned
    after = seen["bb"].model.state_dict()
    before = seen["before"]
    lora = [k for k in after if k.endswith((".lora_A", ".lora_B"))]
    assert len(lora) == 2 * 8  # qkv, proj, fc1, fc2 in each of 2 blocks
    for k, v in after.items():  # every backbone tensor (weights and buffers) is bit-identical
        if k not in lora:
            torch.testing.assert_close(v, before[k.replace(".base.", ".")], rtol=0, atol=0)
    ad = load_adapter(d / "out")
    assert all(float(ad.tensors[k].abs().max()) > 0 for k in ad.tensors if k.endswith("lora_B"))  # left zero
    torch.manual_seed(0)
    init = HashCoder(32, 16).state_dict()
    probe = load_probe(d / "out" / "probe")
    assert not np.array_equal(np.asarray(probe.tensors["net.0.weight"]), init["net.0.weight"].numpy())
    hist = summary.history
    assert [h["trained"] for h in hist] == ["hashcoder", "hashcoder+adapters", "hashcoder+adapters"]
    assert (
        summary.trainable == sum(v.numel() for v in ad.tensors.values()) and summary.trainable < summary.backbone_params
    )


def test_probe_provenance_names_the_adapter_and_a_second_run_does_nothing(tuned):
    d, weights, _, summary = tuned
    out = d / "out"
    doc = json.loads((out / "adapter.json").read_text())
    probe = load_probe(out / "probe")
    assert probe.backbone["adapter_sha256"] == doc["adapter_sha256"] == load_adapter(out).sha256
    assert probe.backbone["adapter"] == str(out.resolve()) and probe.config["finetune"] is True
    assert not (out / ft.CHECKPOINT).exists()
    cfg = FinetuneConfig(
        model=tinyvit.NAME,
        weights=weights,
        image_size=32,
        bits=16,
        epochs=3,
        batch_size=8,
        lora=LoRAConfig(rank=4, alpha=4.0),
        adapter_lr=1e-2,
        device="cpu",
        seed=0,
    )
    again = finetune(open_source("fashion-mnist", limit=N), out, cfg, progress=False)
    assert again.adapter_sha256 == summary.adapter_sha256
    with pytest.raises(InputError, match="other settings"):
        finetune(
            open_source("fashion-mnist", limit=N), out, FinetuneConfig(**{**cfg.__dict__, "bits": 32}), progress=False
        )
    with pytest.raises(InputError, match="labels"):
        finetune(
            open_source(str(tinyvit_images(d)), limit=4),
            d / "nolab",
            FinetuneConfig(**{**cfg.__dict__, "supervised": True}),
            progress=False,
        )


def tinyvit_images(d: Path) -> Path:
    """A flat folder of 4 images (no class subfolders: no labels)."""
    from PIL import Image

    f = d / "flat"
    f.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(f / f"{i}.png")
    return f


def test_tuned_embeddings_build_query_and_never_mix_with_untuned(tuned):
    d, weights, _, _ = tuned
    out = d / "out"
    common = ["--limit", N, "--model", tinyvit.NAME, "--weights", weights, "--device", "cpu"]
    run("embed", "fashion-mnist", d / "db.h5", *common, "--adapter", out)  # image size from the adapter
    run("embed", "fashion-mnist", d / "q.h5", "--split", "test", *common, "--adapter", out)
    run("embed", "fashion-mnist", d / "q0.h5", "--split", "test", *common, "--image-size", 32, "--views", 1)
    run("build", d / "db.h5", out / "probe", d / "index")
    r = run("evaluate", d / "index", d / "q.h5", "--json")
    assert json.loads(r.output)["nq"] == N
    # Untuned queries against the tuned index, and the tuned probe on untuned embeddings: refused.
    r = run("query", d / "index", "--embeddings", d / "q0.h5", ok=False)
    assert r.exit_code == 2 and "no adapter" in r.output and "adapter_sha256" in r.output
    r = run("build", d / "q0.h5", out / "probe", d / "index0", ok=False)
    assert r.exit_code == 2 and "adapter_sha256" in r.output
    run("fit-probe", d / "q0.h5", d / "probe0", "--bits", 16, "--epochs", 1)
    run("build", d / "q0.h5", d / "probe0", d / "index0")
    r = run("evaluate", d / "index0", d / "q.h5", ok=False)
    assert r.exit_code == 2 and "adapter" in r.output
    # Query with an image: the index's backbone is rebuilt with the adapter from its recorded folder.
    from hashindex.embedding.sources import open_source as src

    img = d / "query.png"
    from PIL import Image

    Image.fromarray(src("fashion-mnist", split="test", limit=1).load(0)).save(img)
    by_image = json.loads(run("query", d / "index", img, "-k", 5, "--json").output)[0]["results"]
    by_emb = json.loads(run("query", d / "index", "--embeddings", d / "q.h5", "--limit", 1, "-k", 5, "--json").output)[
        0
    ]["results"]
    assert [h["id"] for h in by_image] == [h["id"] for h in by_emb]
    assert run("finetune", "--help").output.count("--lora-layers") == 1


def _cmd(out: Path, weights: str) -> list[str]:
    # The CLI in a child process that has the tiny ViT registered.
    main = "import sys, tinyvit; from hashindex.cli.main import cli; cli(sys.argv[1:], prog_name='hashindex')"
    return [
        sys.executable,
        "-c",
        main,
        "-q",
        "finetune",
        "fashion-mnist",
        str(out),
        "--limit",
        "32",
        "--model",
        tinyvit.NAME,
        "--weights",
        weights,
        "--image-size",
        "32",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--bits",
        "16",
        "--rank",
        "4",
        "--adapter-lr",
        "1e-2",
        "--device",
        "cpu",
    ]


ENV = dict(
    os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")])
)


def _files(out: Path) -> dict:
    return {
        "adapter": (out / "adapter.safetensors").read_bytes(),
        "probe": {k: v.numpy() for k, v in load_file(str(out / "probe" / "weights.safetensors")).items()},
        "history": [
            {k: v for k, v in h.items() if k != "seconds"}
            for h in json.loads((out / "adapter.json").read_text())["history"]
        ],
    }


def test_killed_run_resumes_to_the_same_result(tmp_path):
    weights = tinyvit.write_weights(tmp_path / "vit.safetensors")
    ref = tmp_path / "ref"  # the uninterrupted run, in this process with the child's thread count
    cfg = FinetuneConfig(
        model=tinyvit.NAME,
        weights=weights,
        image_size=32,
        epochs=4,
        batch_size=8,
        bits=16,
        lora=LoRAConfig(rank=4),
        adapter_lr=1e-2,
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune(open_source("fashion-mnist", limit=32), ref, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(out, weights), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not (out / ft.CHECKPOINT).exists() and proc.poll() is None and time.monotonic() - t0 < 600:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / ft.CHECKPOINT).exists() and not (out / "adapter.json").exists(), (
        "the run ended before it could be killed"
    )
    subprocess.run(_cmd(out, weights), env=ENV, check=True, capture_output=True, timeout=600)
    a, b = _files(ref), _files(out)
    assert a["adapter"] == b["adapter"] and a["history"] == b["history"]
    assert a["probe"].keys() == b["probe"].keys() and all(
        np.array_equal(a["probe"][k], b["probe"][k]) for k in a["probe"]
    )
    assert not (out / ft.CHECKPOINT).exists()


def test_supervised_trains_to_fit_probes_class_codebook(tmp_path, monkeypatch):
    """--supervised uses fit-probe's default targets: the class codebook, aligned to the untrained
    HashCoder's class prototypes on the untuned features, given to every step's loss and
    recorded in the probe; --targets prototype trains without it."""
    from hashindex.backbone.model import load_backbone
    from hashindex.backbone.preprocess import base_size
    from hashindex.probe.fit import class_codebook

    seen = []

    def loss(*a):
        seen.append(a[5])
        return ft_loss(*a)

    ft_loss = ft.crovca_loss
    monkeypatch.setattr(ft, "crovca_loss", loss)
    weights = tinyvit.write_weights(tmp_path / "vit.safetensors")
    src = open_source("fashion-mnist", limit=N)
    cfg = FinetuneConfig(
        model=tinyvit.NAME,
        weights=weights,
        image_size=32,
        bits=16,
        epochs=2,
        batch_size=8,
        supervised=True,
        lora=LoRAConfig(rank=4),
        device="cpu",
        seed=0,
    )
    finetune(src, tmp_path / "cb", cfg, progress=False)
    probe = load_probe(tmp_path / "cb" / "probe")
    assert probe.config["targets"] == "codebook" and probe.config["supervised"] is True
    # reference: the codebook of an untrained HashCoder (same seed) on the plain backbone's eval features
    bb = load_backbone(tinyvit.NAME, weights=weights, image_size=32, device="cpu")
    bases, idx = ft._decode(src, base_size(bb.spec), bb.spec.interpolation, False)
    torch.manual_seed(0)
    feats = ft.eval_features(bb, bases)
    ref = class_codebook(HashCoder(bb.spec.num_features, 16), lambda r: feats[r], src.labels[idx], 0)
    assert probe.meta["codebook"] == ref.to_meta() and ref.min_distance == 8
    assert len(seen) == 2 * 3 and all(np.array_equal(c.numpy(), ref.codes) for c in seen)
    seen.clear()
    proto = finetune(
        src, tmp_path / "pt", FinetuneConfig(**{**cfg.__dict__, "targets": "prototype", "epochs": 1}), progress=False
    )
    assert "codebook" not in load_probe(proto.out / "probe").meta and seen == [None] * 3
