"""Probes: CroVCA and the baselines fit, save and load, and encode consistently."""

import json

import numpy as np
import pytest
import torch
from helpers import write_embeddings

from hashindex.core.config import FitConfig
from hashindex.core.errors import InputError, IntegrityError, MismatchError
from hashindex.probe.artifact import load_probe, probe_hash
from hashindex.probe.baselines import fit_linear, l2_normalize
from hashindex.probe.fit import fit_probe


@pytest.mark.parametrize("method", ["crovca", "lsh", "pca", "pca-rr", "itq"])
def test_fit_save_load_roundtrip(tmp_path, clusters, method):
    probe = fit_probe(clusters, FitConfig(method=method, bits=16, epochs=2), progress=False)
    probe.save(tmp_path / "p")
    back = load_probe(tmp_path / "p")
    x = clusters.embeddings()
    np.testing.assert_array_equal(back.encode(x), probe.encode(x))
    doc = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert doc["method"] == method and doc["bits"] == 16 and doc["input_dim"] == 48
    assert doc["meta"]["embeddings"]["n"] == clusters.n
    assert 0.0 <= doc["meta"]["bit_balance"]["mean"] <= 1.0
    if method == "crovca":
        hist = doc["meta"]["loss_history"]
        assert len(hist) == 2 and hist[1]["loss"] < hist[0]["loss"]
    assert len(probe_hash(tmp_path / "p")) == 64


def test_crovca_is_seeded(clusters):
    a = fit_probe(clusters, FitConfig(bits=16, epochs=1, seed=3), progress=False)
    b = fit_probe(clusters, FitConfig(bits=16, epochs=1, seed=3), progress=False)
    c = fit_probe(clusters, FitConfig(bits=16, epochs=1, seed=4), progress=False)
    x = clusters.embeddings()
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert not np.array_equal(a.encode(x), c.encode(x))


def test_supervised_codes_separate_classes(clusters):
    probe = fit_probe(clusters, FitConfig(bits=16, epochs=3, supervised=True), progress=False)
    bits = np.unpackbits(probe.encode(clusters.embeddings()), axis=1)
    y = clusters.labels().argmax(1)
    # items of one class share nearly all bits: intra-class distance far below inter-class
    intra = np.mean([np.abs(bits[y == c] - bits[y == c].mean(0)).sum(1).mean() for c in range(8)])
    inter = np.abs(bits[:, None] - bits[None, :400]).sum(2).mean()
    assert intra < 0.25 * inter


def test_itq_rotation_is_orthogonal_and_lowers_quantisation_error(clusters):
    x = clusters.embeddings()
    xn = l2_normalize(x.astype(np.float64))
    mean, w_pca = fit_linear(x, 16, "pca")
    _, w_itq = fit_linear(x, 16, "itq")
    r = np.linalg.lstsq(w_pca, w_itq, rcond=None)[0]  # w_itq = w_pca @ R
    np.testing.assert_allclose(r.T @ r, np.eye(16), atol=1e-4)
    v = (xn - mean) @ w_pca

    def q_err(vv):
        return np.linalg.norm(np.sign(vv) - vv)

    assert q_err(v @ r) < q_err(v)


def test_lsh_bits_are_balanced_after_centering(clusters):
    x = clusters.embeddings()
    mean, w = fit_linear(x, 64, "lsh", seed=0)
    assert w.shape == (48, 64)
    ones = ((l2_normalize(x) - mean) @ w > 0).mean(axis=0)
    # Hyperplanes through the mean split the data near its middle; without centring, a random
    # hyperplane through the origin can leave a cluster-mixture mostly on one side.
    assert abs(ones.mean() - 0.5) < 0.05 and ones.min() > 0.15 and ones.max() < 0.85


def test_fit_errors(tmp_path, rng, clusters):
    plain = write_embeddings(tmp_path / "plain.h5", rng.standard_normal((50, 8)).astype(np.float32))
    with pytest.raises(InputError, match="--sample"):
        fit_probe(plain, FitConfig(bits=16, sample=1), progress=False)
    with pytest.raises(InputError, match="multiple of 8"):
        fit_probe(clusters, FitConfig(bits=12), progress=False)
    with pytest.raises(InputError, match="16..1024"):  # the library holds the same range as the CLI
        fit_probe(clusters, FitConfig(bits=8), progress=False)
    with pytest.raises(InputError, match="crovca only"):
        fit_probe(clusters, FitConfig(method="itq", supervised=True), progress=False)
    unlabelled = write_embeddings(
        tmp_path / "u.h5",
        rng.standard_normal((50, 8)).astype(np.float32),
        views=rng.standard_normal((50, 2, 8)).astype(np.float32),
    )
    with pytest.raises(InputError, match="labels"):
        fit_probe(unlabelled, FitConfig(bits=16, supervised=True), progress=False)
    with pytest.raises(InputError, match="bits <= min"):
        fit_probe(plain, FitConfig(method="pca", bits=16), progress=False)


def test_probe_input_checks(tmp_path, clusters):
    probe = fit_probe(clusters, FitConfig(method="lsh", bits=16), progress=False)
    with pytest.raises(MismatchError, match="48-d"):
        probe.encode(np.zeros((2, 10), np.float32))
    with pytest.raises(InputError, match="NaN"):
        probe.encode(np.full((2, 48), np.nan, np.float32))
    with pytest.raises(InputError, match="2-D"):
        probe.encode(np.zeros(48, np.float32))


def test_corrupt_probe_is_refused(tmp_path, clusters):
    probe = fit_probe(clusters, FitConfig(bits=16, epochs=1), progress=False)
    probe.save(tmp_path / "p")
    (tmp_path / "p" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(IntegrityError):
        load_probe(tmp_path / "p")
    with pytest.raises(InputError, match="not a probe folder"):
        load_probe(tmp_path / "nothing")


def test_recalibration_centres_bits_on_the_indexed_embeddings(clusters):
    from hashindex.probe.fit import recalibrate_bits
    from hashindex.probe.hashcoder import HashCoder

    torch.manual_seed(0)
    m = HashCoder(48, 16).eval()
    x = clusters.embeddings() + 5.0  # shifted away from what the BatchNorm has seen
    recalibrate_bits(m, x)
    with torch.no_grad():
        z = m(torch.from_numpy(x)).numpy()
    bn = m.net[-1]
    assert bn.training is False and bn.momentum == 0.1
    np.testing.assert_allclose(z.mean(0), bn.bias.detach().numpy(), atol=1e-3)  # pre-BN mean removed


@pytest.mark.parametrize("eval_view", [True, False])
def test_crovca_trains_on_the_eval_embedding_as_a_view(clusters, monkeypatch, eval_view):
    import hashindex.probe.fit as fit

    seen = {}
    real = fit._train_crovca

    def spy(views, labels, cfg, progress, *rest):
        seen["views"] = views.copy()
        return real(views, labels, cfg, progress, *rest)

    monkeypatch.setattr(fit, "_train_crovca", spy)
    probe = fit_probe(clusters, FitConfig(bits=16, epochs=1, eval_view=eval_view), progress=False)
    want = clusters.views()
    if eval_view:
        want = np.concatenate([clusters.embeddings()[:, None], want], axis=1)
    np.testing.assert_array_equal(seen["views"], want)
    assert probe.config["eval_view"] is eval_view


@pytest.mark.parametrize("n", [23, 17])  # 17 = 2 batches of 8 and a batch of one, which is skipped
def test_epoch_pairs_are_the_per_step_draws_of_the_former_sampler(n):
    from hashindex.probe.fit import epoch_pairs

    v, bs = 3, 8
    ref, new = np.random.default_rng(4), np.random.default_rng(4)
    for _ in range(2):  # two epochs: the generator is left where the per-step sampler left it
        perm = ref.permutation(n)
        got_perm, a, b = epoch_pairs(new, n, v, bs)
        np.testing.assert_array_equal(got_perm, perm)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            if len(idx) < 2:
                continue
            want_a = ref.integers(0, v, len(idx))
            want_b = (want_a + ref.integers(1, v, len(idx))) % v
            np.testing.assert_array_equal(a[s : s + bs], want_a)
            np.testing.assert_array_equal(b[s : s + bs], want_b)
            assert (want_a != want_b).all()


@pytest.mark.parametrize("repeated", [False, True])
def test_batch_rows_gather_the_two_views_of_each_sample(rng, repeated):
    from hashindex.probe.feature_views import repeated_views
    from hashindex.probe.fit import _batch_rows, _view_table, epoch_pairs

    n, d, bs = 23, 5, 8
    x = rng.standard_normal((n, d)).astype(np.float32)
    views = repeated_views(x) if repeated else rng.standard_normal((n, 3, d)).astype(np.float32)
    perm, a, b = epoch_pairs(np.random.default_rng(0), n, views.shape[1], bs)
    table, per = _view_table(views, torch.device("cpu"))
    rows = torch.from_numpy(_batch_rows(perm, a, b, per, bs))
    for s in range(0, n, bs):
        m = min(bs, n - s)
        got = table.index_select(0, rows[2 * s : 2 * s + 2 * m]).numpy()
        np.testing.assert_array_equal(got[:m], views[perm[s : s + m], a[s : s + m]])
        np.testing.assert_array_equal(got[m:], views[perm[s : s + m], b[s : s + m]])


def test_recalibration_logits_are_the_recalibrated_models(clusters):
    from hashindex.probe.fit import recalibrate_bits
    from hashindex.probe.hashcoder import HashCoder

    x = clusters.embeddings()[:1001]  # a last batch of one row: no statistics from it, but its logits
    for bits in (16, 64):  # 64 > 48 dims: the second pass instead of the kept outputs
        torch.manual_seed(0)
        m = HashCoder(48, bits)
        got = recalibrate_bits(m, x, batch_size=500, logits=True)
        with torch.no_grad():
            want = m(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("views", [True, False])  # cached views; feature-space views drawn on the device
def test_crovca_on_cuda_separates_classes_as_on_cpu(tmp_path, clusters, views):
    emb = (
        clusters
        if views
        else write_embeddings(tmp_path / "noviews.h5", clusters.embeddings(), labels=clusters.labels())
    )
    probe = fit_probe(emb, FitConfig(bits=16, epochs=3, supervised=True, device="cuda"), progress=False)
    assert all(np.isfinite(h["loss"]) for h in probe.meta["loss_history"])
    bits = np.unpackbits(probe.encode(clusters.embeddings()), axis=1)  # encoded on CPU
    y = clusters.labels().argmax(1)
    intra = np.mean([np.abs(bits[y == c] - bits[y == c].mean(0)).sum(1).mean() for c in range(8)])
    inter = np.abs(bits[:, None] - bits[None, :400]).sum(2).mean()
    assert intra < 0.25 * inter
    assert 0.3 < probe.meta["bit_balance"]["mean"] < 0.7


@pytest.mark.parametrize("bits,reg,want", [(16, None, 0.2), (24, None, 0.1), (64, None, 0.1), (16, 0.05, 0.05)])
def test_coding_rate_weight_by_code_length(clusters, monkeypatch, bits, reg, want):
    """Codes of at most 16 bits get the stronger coding-rate weight unless one is given; the loss
    uses it and the probe records it."""
    import hashindex.probe.fit as fit

    used = set()
    real = fit.crovca_loss

    def spy(z1, z2, y, eps, weight, codes=None):
        used.add(weight)
        return real(z1, z2, y, eps, weight, codes)

    monkeypatch.setattr(fit, "crovca_loss", spy)
    probe = fit_probe(clusters, FitConfig(bits=bits, epochs=1, reg=reg), progress=False)
    assert used == {want} and probe.config["reg"] == want
    with pytest.raises(InputError):
        FitConfig(reg=-0.1).validate()
