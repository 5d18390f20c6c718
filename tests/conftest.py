"""Shared fixtures: real Fashion-MNIST embeddings from the packaged EfficientNet-Lite0, made once."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_embeddings

from hashindex.core.config import EmbedConfig
from hashindex.embedding.run import embed
from hashindex.embedding.sources import open_source
from hashindex.store.reader import open_embeddings

N_DB, N_Q, SIZE = 1200, 400, 112


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """Backbones exported to ONNX go to a folder of the test session, never the user's cache."""
    import os

    os.environ["HASHINDEX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return os.environ["HASHINDEX_CACHE"]


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory):
    """(db.h5, q.h5): 1,200 train images with 2 views and 400 test images, 112 px."""
    d = tmp_path_factory.mktemp("fmnist")
    db, q = d / "db.h5", d / "q.h5"
    embed(
        open_source("fashion-mnist", split="train", limit=N_DB),
        db,
        EmbedConfig(image_size=SIZE, views=2),
        progress=False,
    )
    embed(open_source("fashion-mnist", split="test", limit=N_Q), q, EmbedConfig(image_size=SIZE), progress=False)
    return open_embeddings(db), open_embeddings(q)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def clusters(tmp_path, rng):
    """Synthetic embeddings: 8 Gaussian clusters in 48-d, two noisy views each, single labels."""
    n, d, c = 800, 48, 8
    centers = rng.standard_normal((c, d)) * 3
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    views = (x[:, None, :] + 0.5 * rng.standard_normal((n, 2, d))).astype(np.float32)
    labels = np.eye(c, dtype=np.uint8)[y]
    return write_embeddings(tmp_path / "syn.h5", x, views, labels)
