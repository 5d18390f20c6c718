"""The embed pipeline: all views of a batch in one forward equal the forwards view by view; the
writer thread keeps appends in order and hands its errors to the embedding thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from hashindex.backbone.augment import augmented_view, eval_view, sample_params
from hashindex.backbone.model import load_backbone
from hashindex.backbone.preprocess import base_size, to_base
from hashindex.core.config import EmbedConfig
from hashindex.embedding.run import embed
from hashindex.embedding.sources import open_source
from hashindex.store.background import WriterThread
from hashindex.store.reader import open_embeddings
from hashindex.store.writer import EmbeddingsWriter

# Max abs difference between the features of one forward of (1+V)·m images and of 1+V forwards of
# m images, on CPU: exactly 0 measured here (EfficientNet-Lite0 at 64, 112 and 224 px, m = 8..32,
# V = 2, 1 and 2 threads). oneDNN may pick other kernels for a larger batch on other CPUs, so
# float noise up to 1e-4 is allowed on features of mean magnitude 0.1..1 (checked below).
TOL = 1e-4


def test_one_forward_of_all_views_equals_the_forwards_view_by_view(tmp_path):
    src = open_source("fashion-mnist", split="test", limit=40)
    cfg = EmbedConfig(image_size=64, views=2, batch_size=16, device="cpu", seed=5)
    got = open_embeddings(embed(src, tmp_path / "e.h5", cfg, progress=False).path)
    bb = load_backbone(image_size=64, device="cpu")
    s0 = base_size(bb.spec)
    want, want_views = [], []
    for s in range(0, len(src), cfg.batch_size):  # the former path: one forward per view and batch
        idx = np.arange(s, min(s + cfg.batch_size, len(src)))
        x = torch.from_numpy(np.stack([to_base(src.load(int(i)), s0, bb.spec.interpolation) for i in idx])).permute(
            0, 3, 1, 2
        )
        want.append(bb.features(eval_view(x, bb.spec)).numpy())
        want_views.append(
            np.stack(
                [
                    bb.features(augmented_view(x, bb.spec, sample_params(idx, v, cfg.seed, s0, cfg.augment))).numpy()
                    for v in range(2)
                ],
                axis=1,
            )
        )
    want, want_views = np.concatenate(want), np.concatenate(want_views)
    assert 0.05 < np.abs(want).mean() < 20  # the scale TOL is meant for
    assert not np.allclose(want_views[:, 0], want_views[:, 1], atol=TOL)  # the views do differ
    assert got.embeddings().shape == want.shape and got.views().shape == want_views.shape
    np.testing.assert_allclose(got.embeddings(), want, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.views(), want_views, rtol=0, atol=TOL)


def test_an_error_of_the_writer_thread_surfaces_and_the_run_resumes(tmp_path, monkeypatch):
    src = open_source("fashion-mnist", split="test", limit=48)
    cfg = EmbedConfig(image_size=32, views=1, batch_size=8, device="cpu", commit_seconds=0)
    ref = open_embeddings(embed(src, tmp_path / "ref.h5", cfg, progress=False).path)
    real, calls = EmbeddingsWriter.append, []

    def failing(self, **kw):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, **kw)

    monkeypatch.setattr(EmbeddingsWriter, "append", failing)
    with pytest.raises(OSError, match="No space left"):
        embed(src, tmp_path / "out.h5", cfg, progress=False)
    assert calls[0] != threading.current_thread().name  # appended on the writer thread
    assert len(calls) == 3  # nothing was appended after the failure
    monkeypatch.setattr(EmbeddingsWriter, "append", real)
    out = open_embeddings(embed(src, tmp_path / "out.h5", cfg, progress=False).path)  # resumes after batch 2
    np.testing.assert_array_equal(out.embeddings(), ref.embeddings())
    np.testing.assert_array_equal(out.views(), ref.views())
    assert out.names() == ref.names()


def test_writer_thread_runs_calls_in_order_and_raises_their_error():
    seen = []
    with WriterThread(depth=1) as w:
        for i in range(20):
            w.submit(seen.append, i)
    assert seen == list(range(20))

    def boom(i):
        if i == 2:
            raise ValueError("bad batch")
        seen.append(i)

    seen.clear()
    w = WriterThread(depth=1)
    with pytest.raises(ValueError, match="bad batch"):
        for i in range(50):
            w.submit(boom, i)
        w.close()
    assert seen == [0, 1]
    with pytest.raises(ValueError, match="bad batch"):  # and again at close
        w.close()


def test_writer_thread_submit_waits_while_the_queue_is_full():
    gate, w = threading.Event(), WriterThread(depth=1)
    w.submit(gate.wait)  # running
    w.submit(lambda: None)  # queued: the queue is full
    t = threading.Thread(target=w.submit, args=(lambda: None,))
    t.start()
    t.join(0.2)
    blocked = t.is_alive()
    gate.set()
    t.join()
    w.close()
    assert blocked


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_embedding_with_views_is_close_to_cpu(tmp_path):
    src = open_source("fashion-mnist", split="test", limit=40)
    out = {}
    for dev in ("cpu", "cuda"):
        cfg = EmbedConfig(image_size=64, views=2, batch_size=16, device=dev, seed=5)
        out[dev] = open_embeddings(embed(src, tmp_path / f"{dev}.h5", cfg, progress=False).path)
    for get in (lambda e: e.embeddings(), lambda e: e.views().reshape(-1, e.dim)):
        a, b = get(out["cpu"]), get(out["cuda"])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() > 0.98  # bf16 autocast on CUDA: close, not equal
