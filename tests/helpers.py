"""Helpers shared by tests."""

import numpy as np

from hashindex.store.reader import open_embeddings

FAKE_SPEC = {
    "model": "fake",
    "weights": "random",
    "weights_sha256": None,
    "image_size": 32,
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "mean": [0.5] * 3,
    "std": [0.5] * 3,
    "num_features": 0,
}


def write_embeddings(path, x, views=None, labels=None, names=None, spec=None, label_names=None, source=None):
    """A synthetic embeddings file through the real writer (for fast probe/index tests);
    ``source``: the recorded source (default synthetic), e.g. a folder the names live in."""
    import json

    from hashindex.store.writer import EmbeddingsWriter

    n, d = x.shape
    spec = dict(spec or FAKE_SPEC, num_features=d)
    attrs = {
        "backbone": json.dumps(spec),
        "augment": "{}",
        "views": 0 if views is None else views.shape[1],
        "seed": 0,
        "source": json.dumps(source or {"kind": "synthetic"}),
        "label_names": json.dumps(label_names),
    }
    w = EmbeddingsWriter(
        path, n=n, dim=d, views=attrs["views"], label_dim=0 if labels is None else labels.shape[1], attrs=attrs
    )
    w.append(
        items_done=n,
        embeddings=x,
        views=views,
        labels=labels,
        names=names or [f"item{i}" for i in range(n)],
        source_index=np.arange(n),
    )
    w.finish()
    return open_embeddings(path)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random damage to a file's bytes: a flipped byte, a truncation, an overwritten run, or
    appended junk; returns its description and the damaged bytes."""
    op = rng.random()
    if op < 0.5 or len(data) < 2:
        pos = int(rng.integers(len(data)))
        out = bytearray(data)
        out[pos] ^= int(rng.integers(1, 256))
        return f"flip byte {pos}", bytes(out)
    if op < 0.7:
        cut = int(rng.integers(0, len(data)))
        return f"truncate to {cut}", data[:cut]
    if op < 0.9:
        pos, k = int(rng.integers(len(data))), int(rng.integers(2, 17))
        out = bytearray(data)
        chunk = rng.integers(0, 256, min(k, len(data) - pos), dtype=np.uint8).tobytes()
        out[pos : pos + len(chunk)] = chunk
        if bytes(out) == data:
            out[pos] ^= 0xFF
        return f"overwrite {len(chunk)} bytes at {pos}", bytes(out)
    return "append bytes", data + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()


def run_cli(*args, ok=True):
    """``hashindex -q ARGS`` through click's CliRunner; asserts exit 0 unless ``ok=False``."""
    from click.testing import CliRunner

    from hashindex.cli.main import cli

    r = CliRunner().invoke(cli, ["-q", *map(str, args)])
    if ok:
        assert r.exit_code == 0, r.output
    return r
