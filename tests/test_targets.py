"""Supervised targets: the class codebook keeps its minimum distance, and trained class codes
stay at least that far apart (two classes never merge)."""

import numpy as np
import pytest
import torch
from helpers import write_embeddings

from hashindex.core.config import FitConfig
from hashindex.probe.fit import config_from_record, fit_probe, resolve_epochs
from hashindex.probe.losses import codebook_targets, supervised_targets
from hashindex.probe.targets import align_codebook, hadamard, make_codebook


def _pairwise(codes):
    c = np.asarray(codes, np.int64)
    return (c[:, None] != c[None]).sum(2)


@pytest.mark.parametrize(
    "classes,bits,want", [(10, 16, 8), (10, 64, 32), (20, 16, 8), (30, 16, 8), (10, 24, 1), (100, 32, 1)]
)
def test_codebook_minimum_distance(classes, bits, want):
    book = make_codebook(classes, bits, seed=1)
    d = _pairwise(book.codes)
    np.fill_diagonal(d, bits + 1)
    assert book.codes.shape == (classes, bits)
    assert d.min() == book.min_distance >= want
    if bits & (bits - 1) == 0 and classes <= bits - 1:
        assert (book.codes.sum(1) == bits // 2).all()  # Hadamard rows: balanced


def test_hadamard_rows_are_orthogonal():
    h = hadamard(32).astype(np.int64)
    np.testing.assert_array_equal(h @ h.T, 32 * np.eye(32))


def test_alignment_keeps_distances_and_matches_prototypes(rng):
    book = make_codebook(10, 16, seed=0)
    # prototypes that are a hidden rearrangement of the codebook, plus noise
    perm_rows, perm_cols = rng.permutation(10), rng.permutation(16)
    flip = rng.random(16) < 0.5
    hidden = book.codes[perm_rows][:, perm_cols] ^ flip
    protos = (2.0 * hidden - 1) + 0.3 * rng.standard_normal(hidden.shape)
    aligned = align_codebook(book.codes, protos)
    assert sorted(_pairwise(aligned).ravel()) == sorted(_pairwise(book.codes).ravel())
    assert (aligned == hidden).mean() >= 0.9  # a local search: near the hidden arrangement
    assert (aligned == hidden).mean() > (book.codes == hidden).mean() + 0.3


def test_codebook_targets_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    codes = torch.tensor(
        [[1, 1, 0, 0, 1, 0, 1, 0], [1, 0, 1, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1, 0]], dtype=torch.uint8
    )
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]])
    t = codebook_targets(z1, z2, labels, codes)
    proto = supervised_targets(z1, z2, labels)
    np.testing.assert_array_equal(t[0], codes[0])
    np.testing.assert_array_equal(t[1], codes[1])
    agree = codes[0] == codes[1]  # two labels: their codes where they agree, prototypes elsewhere
    np.testing.assert_array_equal(t[2][agree], codes[0][agree])
    np.testing.assert_array_equal(t[2][~agree], proto[2][~agree])
    np.testing.assert_array_equal(t[3], (codes.float().mean(0) > 0.5).float())  # three labels: majority


@pytest.fixture
def ten_classes(tmp_path, rng):
    """10 classes in 5 pairs of nearby clusters (like shirt / T-shirt), two noisy views each."""
    n, d = 1000, 32
    pairs = rng.standard_normal((5, d)) * 3
    centers = np.repeat(pairs, 2, axis=0) + rng.standard_normal((10, d)) * 1.2
    y = np.arange(n) % 10
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    views = (x[:, None, :] + 0.5 * rng.standard_normal((n, 2, d))).astype(np.float32)
    return write_embeddings(tmp_path / "ten.h5", x, views, np.eye(10, dtype=np.uint8)[y])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trained_class_codes_keep_the_guaranteed_distance(ten_classes, seed):
    probe = fit_probe(ten_classes, FitConfig(bits=16, supervised=True, seed=seed, min_steps=150), progress=False)
    guaranteed = probe.meta["codebook"]["min_distance"]
    assert guaranteed == 8
    bits = np.unpackbits(probe.encode(ten_classes.embeddings()), axis=1)
    y = ten_classes.labels().argmax(1)
    class_codes = np.stack([bits[y == c].mean(0) > 0.5 for c in range(10)])  # majority code per class
    d = _pairwise(class_codes)
    np.fill_diagonal(d, 99)
    assert d.min() >= guaranteed, f"two class codes are {d.min()} bits apart, fewer than {guaranteed}"


def test_schedule_floor_and_override():
    assert resolve_epochs(60000, FitConfig()) == 5  # 235 steps/epoch: 5 epochs already pass the floor
    assert resolve_epochs(2000, FitConfig()) == 63  # 8 steps/epoch → 504 steps
    assert resolve_epochs(2000, FitConfig(epochs=3)) == 3
    assert resolve_epochs(2000, FitConfig(min_steps=0)) == 5


def test_old_probe_records_get_legacy_values():
    cfg = config_from_record({"method": "crovca", "bits": 32, "supervised": True, "epochs": 5, "seed": 1})
    assert cfg.targets == "prototype" and cfg.min_steps == 0 and cfg.epochs == 5
    assert config_from_record({"targets": "codebook", "min_steps": 800}).targets == "codebook"
