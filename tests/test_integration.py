"""End to end on real images and the real pretrained backbone: CroVCA beats LSH at equal bits."""

import numpy as np
import pytest

from hashindex import build_index
from hashindex.core.config import FitConfig
from hashindex.measure.evaluate import evaluate
from hashindex.probe.fit import fit_probe


def test_embeddings_file_is_complete_and_labelled(fmnist):
    db, q = fmnist
    assert (db.n, db.dim, db.num_views) == (1200, 1280, 2) and q.num_views == 0
    x, v = db.embeddings(), db.views()
    assert np.isfinite(x).all() and np.abs(x).sum(1).min() > 0
    # views are augmentations of the same images: nearer their own image than another one
    cos = lambda a, b: (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)  # noqa: E731
    assert cos(x, v[:, 0]).mean() > cos(x, np.roll(v[:, 0], 1, axis=0)).mean() + 0.1
    assert db.labels().sum() == 1200 and db.backbone.weights.startswith("packaged:")
    assert db.attrs["backbone"]["image_size"] == 112


@pytest.mark.parametrize("bits", [32])
def test_crovca_beats_lsh(tmp_path, fmnist, bits):
    db, q = fmnist
    scores = {}
    for method in ("crovca", "lsh"):
        # min_steps=0: the paper's 5 epochs (the automatic floor would train 500 steps here)
        fit_probe(db, FitConfig(method=method, bits=bits, min_steps=0), progress=False).save(tmp_path / method)
        idx = build_index(db, tmp_path / method, tmp_path / f"idx-{method}", kind="flat")
        scores[method] = evaluate(idx, q, topk=100, with_float=method == "crovca")
    assert scores["crovca"]["map"] > scores["lsh"]["map"] + 0.03, scores
    assert scores["crovca"]["float_map"] > 0.5
