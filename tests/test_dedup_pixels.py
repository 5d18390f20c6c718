"""The pixel confirmation of near-duplicates: the agreement score against NumPy's Pearson
correlation, what it sees (photometric edits and mirroring, not another picture), and dedup
through the CLI and the API confirming by pixels the copies whose float cosine is below the
threshold, with nothing confirmed when the pixels are off or an image is gone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli, write_embeddings
from PIL import Image, ImageEnhance

import hashindex
from hashindex.core.config import DedupConfig
from hashindex.dedup.pixels import DRAFT, SIDE, agreement, thumbnail, unit_vectors
from hashindex.embedding.decode import decode_image


def reference(a: np.ndarray, b: np.ndarray) -> float:
    """max(corr(a, b), corr(a, b mirrored)) by np.corrcoef of the flattened thumbnails."""
    a = a.astype(np.float64).ravel()
    return max(np.corrcoef(a, b.astype(np.float64).ravel())[0, 1], np.corrcoef(a, b[:, ::-1].ravel())[0, 1])


def test_agreement_equals_pearson_correlation():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 256, (50, SIDE, SIDE), dtype=np.uint8)
    t[7] = t[3][:, ::-1]  # a mirrored copy
    t[8] = np.clip(t[3].astype(int) * 0.5 + 40, 0, 255).astype(np.uint8)  # contrast and brightness
    plain, mirror = unit_vectors(t)
    i, j = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    i[:3], j[:3] = 3, (7, 8, 3)
    got = agreement(plain, plain, mirror, i, j)
    want = np.array([reference(t[a], t[b]) for a, b in zip(i, j)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[:3].min() > 0.999
    # a blank thumbnail agrees with nothing (no division by zero)
    blank = np.full((2, SIDE, SIDE), 128, np.uint8)
    p, m = unit_vectors(blank)
    assert agreement(p, p, m, np.array([0]), np.array([1]))[0] == 0


def picture(rng, px: int = 96) -> Image.Image:
    """A smooth random RGB picture (upsampled noise): different pictures correlate little."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((px, px), Image.BICUBIC)


def edits(img: Image.Image, folder, stem: str) -> dict[str, str]:
    """Copies a thumbnail should see as the same picture: brightness and contrast, mirror, a
    heavy JPEG, and a downscale-upscale."""
    out = {}
    b = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.2)).enhance(0.8)
    b.save(folder / f"{stem}_bright.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(folder / f"{stem}_mirror.png")
    img.save(folder / f"{stem}_jpeg.jpg", quality=15)
    img.resize((40, 40), Image.BOX).resize(img.size, Image.BILINEAR).save(folder / f"{stem}_rescale.png")
    for e in ("bright", "mirror", "jpeg", "rescale"):
        out[e] = f"{stem}_{e}.{'jpg' if e == 'jpeg' else 'png'}"
    return out


def test_thumbnails_see_edited_copies_not_other_pictures(tmp_path):
    rng = np.random.default_rng(1)
    pics = [picture(rng) for _ in range(20)]
    for k, p in enumerate(pics):
        p.save(tmp_path / f"p{k}.png")
    copies = edits(pics[0], tmp_path, "p0")
    thumbs = {n: thumbnail(decode_image(str(tmp_path / n), DRAFT)) for n in [f"p{k}.png" for k in range(20)]}
    thumbs.update({n: thumbnail(decode_image(str(tmp_path / n), DRAFT)) for n in copies.values()})
    for name in copies.values():
        assert reference(thumbs["p0.png"], thumbs[name]) > 0.99, name
    others = [reference(thumbs["p0.png"], thumbs[f"p{k}.png"]) for k in range(1, 20)]
    assert max(others) < 0.95


def unit(v):
    return v / np.linalg.norm(v)


@pytest.fixture
def copies_below_cosine(tmp_path):
    """20 pictures; p0..p2 each have four edited copies whose float embeddings sit at cosine 0.9
    of their original (below the default 0.94), and p3 has a neighbour at cosine 0.9 that is
    another picture. An index over them, fitted and built through the CLI."""
    rng = np.random.default_rng(2)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    names, x = [], []
    base = [unit(rng.standard_normal(32)) for _ in range(20)]
    for k in range(20):
        picture(rng).save(imgs / f"p{k}.png")
        names.append(f"p{k}.png")
        x.append(base[k])
    truth = []
    for k in range(3):
        made = edits(Image.open(imgs / f"p{k}.png").convert("RGB"), imgs, f"p{k}")
        for name in made.values():
            side = unit(rng.standard_normal(32) - (rng.standard_normal(32) @ base[k]) * base[k])
            side = unit(side - (side @ base[k]) * base[k])
            names.append(name)
            x.append(0.9 * base[k] + np.sqrt(1 - 0.81) * side)
        truth.append(frozenset([f"p{k}.png", *made.values()]))
    picture(rng).save(imgs / "p3_other.png")
    side = unit(rng.standard_normal(32))
    side = unit(side - (side @ base[3]) * base[3])
    names.append("p3_other.png")
    x.append(0.9 * base[3] + np.sqrt(1 - 0.81) * side)
    x = np.stack(x).astype(np.float32)
    write_embeddings(tmp_path / "e.h5", x, names=names, source={"kind": "folder", "location": str(imgs)})
    run_cli("fit-probe", tmp_path / "e.h5", tmp_path / "probe", "--method", "lsh", "--bits", 64)
    run_cli("build", tmp_path / "e.h5", tmp_path / "probe", tmp_path / "index")
    return tmp_path / "index", imgs, names, set(truth)


def test_pixels_confirm_copies_that_cosine_misses(tmp_path, copies_below_cosine):
    index, imgs, names, truth = copies_below_cosine
    r = run_cli("dedup", index, "--radius", 0.5, "--json")
    doc = json.loads(r.stdout)
    assert doc["min_pixels"] == DedupConfig().min_pixels and doc["min_cosine"] == DedupConfig().min_cosine
    assert {frozenset(it["name"] for it in g["items"]) for g in doc["groups"]} == truth
    for g in doc["groups"]:
        for it in g["items"]:
            if not it["keep"]:
                assert it["cosine"] < doc["min_cosine"] and it["pixels"] >= doc["min_pixels"]
    # the CSV carries the pixel agreement too
    run_cli("dedup", index, "--radius", 0.5, "--csv", tmp_path / "g.csv")
    lines = (tmp_path / "g.csv").read_text().splitlines()
    assert lines[0].split(",")[-1] == "pixels" and len(lines) == 1 + 15
    # cosine only: nothing reaches 0.94
    r = run_cli("dedup", index, "--radius", 0.5, "--no-pixels", "--json")
    assert json.loads(r.stdout)["groups"] == [] and json.loads(r.stdout)["min_pixels"] is None
    # the query by id: the original's copies, confirmed by their pixels
    ix = hashindex.open_index(index)
    (found,) = ix.duplicates([names.index("p1.png")], radius=0.5)
    assert {d["name"] for d in found["duplicates"]} == {n for n in names if n.split(".")[0].split("_")[0] == "p1"}
    assert all(d["pixels"] is None or d["pixels"] >= DedupConfig().min_pixels for d in found["duplicates"])
    # an image gone from disk: its pairs are no longer confirmed, the rest are
    (imgs / "p2_mirror.png").unlink()
    groups = ix.duplicates(radius=0.5)
    assert {frozenset(it["name"] for it in g["items"]) for g in groups} == (
        truth - {next(t for t in truth if "p2.png" in t)}
    ) | {next(t for t in truth if "p2.png" in t) - {"p2_mirror.png"}}


def test_query_pixel_checks_are_bounded_per_query(monkeypatch, copies_below_cosine):
    """A query reads the images of at most PIXEL_CHECKS candidates, those of highest cosine: with
    room for one, only the copy nearest in cosine can be confirmed by its pixels."""
    from hashindex.dedup import find

    index, imgs, names, truth = copies_below_cosine
    ix = hashindex.open_index(index)
    (full,) = ix.duplicates([names.index("p0.png")], radius=0.5)
    assert len([d for d in full["duplicates"] if d["pixels"] is not None]) == 4
    monkeypatch.setattr(find, "PIXEL_CHECKS", 1)
    (one,) = ix.duplicates([names.index("p0.png")], radius=0.5)
    by_pixels = [d for d in one["duplicates"] if d["pixels"] is not None]
    assert len(by_pixels) == 1
    below = [d["cosine"] for d in full["duplicates"] if d["cosine"] < DedupConfig().min_cosine]
    assert by_pixels[0]["cosine"] == max(below)  # the copies tie at 0.9: any of them
