"""Bad inputs during embed: every undecodable file is recorded, never replaced, never a hang;
every decodable oddity (CMYK, 16-bit, palette, alpha, EXIF rotation...) is embedded correctly."""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hashindex.backbone.features import embed_images
from hashindex.backbone.model import load_backbone
from hashindex.core.config import EmbedConfig
from hashindex.core.errors import InputError
from hashindex.embedding.decode import MAX_IMAGE_PIXELS, DecodeError, decode_image
from hashindex.embedding.run import TooManyFailuresError, embed
from hashindex.embedding.sources import open_source
from hashindex.store.reader import open_embeddings

SIZE = 32


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h RGB pixels (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + _chunk(b"IEND", b"")
    )


def _noise(rng, h=48, w=64) -> np.ndarray:
    coarse = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), np.uint8))


def _jpeg_bytes(arr, **kw) -> bytes:
    import io

    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG", quality=95, **kw)
    return b.getvalue()


def make_corpus(d: Path, rng) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Write the corpus; returns (good name -> expected RGB decode, bad name -> expected error class)."""
    d.mkdir(parents=True, exist_ok=True)
    good: dict[str, np.ndarray] = {}
    bad: dict[str, str | None] = {}

    rgb = _noise(rng)
    Image.fromarray(rgb).save(d / "a_rgb.png")
    good["a_rgb.png"] = rgb

    # EXIF orientation 6: stored sideways, shown rotated 90 degrees clockwise.
    side = _noise(rng, 32, 48)
    im = Image.fromarray(side)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(d / "b_exif_rotated.jpg", quality=95, exif=exif.tobytes())
    stored = np.asarray(Image.open(d / "b_exif_rotated.jpg").convert("RGB"))
    good["b_exif_rotated.jpg"] = np.rot90(stored, k=-1)

    cmyk = Image.fromarray(_noise(rng)).convert("CMYK")
    cmyk.save(d / "c_cmyk.jpg", quality=95)
    good["c_cmyk.jpg"] = np.asarray(Image.open(d / "c_cmyk.jpg").convert("RGB"))

    ramp = (np.arange(40 * 24, dtype=np.uint32).reshape(24, 40) * 68).astype(np.uint16)
    Image.fromarray(ramp).save(d / "d_gray16.png")
    g8 = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    good["d_gray16.png"] = np.repeat(g8[:, :, None], 3, axis=2)

    pal = Image.fromarray(_noise(rng)).quantize(16)
    pal.save(d / "e_palette.png")
    good["e_palette.png"] = np.asarray(pal.convert("RGB"))

    pal_t = Image.fromarray(_noise(rng)).quantize(8)
    pal_t.info["transparency"] = 0
    pal_t.save(d / "f_palette_transparent.png", transparency=0)
    exp = np.asarray(pal_t.convert("RGB")).copy()
    exp[np.asarray(pal_t) == 0] = 255  # the transparent colour over white
    good["f_palette_transparent.png"] = exp

    rgba = np.concatenate([_noise(rng), np.zeros((48, 64, 1), np.uint8)], axis=2)
    rgba[:24, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(d / "g_alpha.png")
    exp = rgba[:, :, :3].copy()
    exp[24:] = 255
    good["g_alpha.png"] = exp

    la = np.stack([np.full((20, 30), 90, np.uint8), np.full((20, 30), 255, np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(d / "h_gray_alpha.png")
    good["h_gray_alpha.png"] = np.full((20, 30, 3), 90, np.uint8)

    Image.fromarray(np.eye(16, dtype=bool)).save(d / "i_bilevel.png")
    good["i_bilevel.png"] = np.repeat((np.eye(16) * 255).astype(np.uint8)[:, :, None], 3, axis=2)

    Image.new("RGB", (1, 1), (12, 34, 56)).save(d / "j_one_pixel.png")
    good["j_one_pixel.png"] = np.array([[[12, 34, 56]]], np.uint8)

    # --- undecodable ---
    (d / "k_empty.jpg").write_bytes(b"")
    bad["k_empty.jpg"] = "OSError"
    jpg = _jpeg_bytes(_noise(rng, 128, 128))
    (d / "l_truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    bad["l_truncated.jpg"] = "OSError"
    Image.fromarray(_noise(rng, 128, 128)).save(d / "tmp.png")
    png = (d / "tmp.png").read_bytes()
    (d / "tmp.png").unlink()
    (d / "m_truncated.png").write_bytes(png[: len(png) * 2 // 3])
    bad["m_truncated.png"] = None  # Pillow's class for it varies by version
    corrupt = bytearray(png)
    for k in range(len(png) // 2, len(png) // 2 + 64):
        corrupt[k] ^= 0x5A
    (d / "n_corrupt_middle.png").write_bytes(bytes(corrupt))
    bad["n_corrupt_middle.png"] = None
    (d / "o_text.png").write_text("this is not an image\n")
    bad["o_text.png"] = "UnidentifiedImageError"
    (d / "p_html.jpg").write_text("<!doctype html><title>404 Not Found</title>")
    bad["p_html.jpg"] = "UnidentifiedImageError"
    (d / "q_bomb_huge.png").write_bytes(_png_claiming(100_000, 100_000))
    bad["q_bomb_huge.png"] = "DecompressionBombError"
    side = int(np.sqrt(MAX_IMAGE_PIXELS * 1.3))  # above the limit, below Pillow's own 2x error
    (d / "r_bomb_near_limit.png").write_bytes(_png_claiming(side, side))
    bad["r_bomb_near_limit.png"] = "DecompressionBombError"
    (d / "s_bomb.gif").write_bytes(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b";")
    bad["s_bomb.gif"] = None
    os.symlink(d / "nowhere.png", d / "t_dangling_link.png")
    bad["t_dangling_link.png"] = "FileNotFoundError"
    os.mkfifo(d / "u_fifo.jpg")  # opening it for reading would block forever
    bad["u_fifo.jpg"] = "OSError"
    return good, bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus") / "imgs"
    good, bad = make_corpus(d, np.random.default_rng(0))
    return d, good, bad


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(image_size=SIZE, device="cpu")


def test_each_file_decodes_right_or_fails_fast_with_its_class(corpus):
    d, good, bad = corpus
    for name, want in good.items():
        got = decode_image(str(d / name))
        assert got.dtype == np.uint8 and got.flags.c_contiguous, name
        tol = 3 if name.endswith(".jpg") else 0  # re-decoding JPEG may round differently
        assert got.shape == want.shape, name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= tol, name
    for name, cls in bad.items():
        t0 = time.perf_counter()
        with pytest.raises(DecodeError) as e:
            decode_image(str(d / name))
        assert time.perf_counter() - t0 < 2.0, f"{name} took too long"
        assert e.value.path == str(d / name) and e.value.message
        if cls:
            assert e.value.error_class == cls, (name, e.value)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_image(str(d / "r_bomb_near_limit.png"))


def test_embed_records_every_failure_and_embeds_every_good_image(corpus, backbone, tmp_path):
    d, good, bad = corpus
    src = open_source(str(d))
    assert len(src) == len(good) + len(bad)
    out = tmp_path / "e.h5"
    t0 = time.perf_counter()
    with pytest.raises(TooManyFailuresError) as e:  # default max_failures=0: any failure is an error...
        embed(src, out, EmbedConfig(image_size=SIZE, batch_size=4, device="cpu", num_workers=1), progress=False)
    assert time.perf_counter() - t0 < 120
    s = e.value.summary
    assert (s.rows, s.failures, s.items) == (len(good), len(bad), len(src))
    assert f"{len(bad)} of {len(src)} images could not be decoded" in str(e.value)
    assert sum(s.failure_counts.values()) == len(bad)
    emb = open_embeddings(out, verify=True)  # ...but the file is written, failures listed
    assert emb.names() == sorted(good)  # no neighbour or gray padding took a failed file's place
    fails = {f["name"]: f for f in emb.failures()}
    assert set(fails) == set(bad)
    for name, f in fails.items():
        assert src.names[f["source_index"]] == name and f["error"] and f["message"]
        if bad[name]:
            assert f["error"] == bad[name], f
    np.testing.assert_array_equal(
        np.sort(np.concatenate([emb.source_index(), [f["source_index"] for f in fails.values()]])), np.arange(len(src))
    )
    x = emb.embeddings()
    want = embed_images(backbone, [good[n] for n in emb.names()])
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)
    # the rotation matters: the unrotated pixels give another embedding
    unrotated = embed_images(backbone, [np.rot90(good["b_exif_rotated.jpg"], k=1)])
    assert np.abs(unrotated[0] - x[emb.names().index("b_exif_rotated.jpg")]).max() > 1e-2


def test_max_failures_count_and_fraction_decide_the_exit_status(corpus, tmp_path):
    from hashindex.cli.main import cli

    d, good, bad = corpus
    args = ["-q", "embed", str(d), "--image-size", str(SIZE), "--device", "cpu", "--batch-size", "8"]
    r = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "a.h5"), *args[3:], "--max-failures", str(len(bad))])
    assert r.exit_code == 0, r.output
    assert f"{len(good)} embeddings; {len(bad)} of {len(good) + len(bad)} images could not be decoded" in r.output
    assert "listed in a.h5:/failures" in r.output and "DecompressionBombError" in r.output
    r = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "b.h5"), *args[3:], "--max-failures", "0.1"])
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert line.startswith("error: wrote") and "\n" not in line and "more than --max-failures 0.1" in line, r.output
    assert open_embeddings(tmp_path / "b.h5").n == len(good)  # written all the same
    # re-running a finished command changes nothing and reports the same outcome
    r = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "b.h5"), *args[3:], "--max-failures", "0.9"])
    assert r.exit_code == 0 and f"{len(good)} embeddings" in r.output, r.output
    r = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "b.h5"), *args[3:], "--max-failures", "-1"])
    assert r.exit_code == 2 and "--max-failures" in r.output
    with pytest.raises(InputError, match="max-failures"):
        embed(open_source(str(d)), tmp_path / "c.h5", EmbedConfig(max_failures=float("nan")))


def test_a_source_of_only_bad_files_still_completes(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.jpg").write_bytes(b"")
    (d / "y.png").write_bytes(b"GIF87a")
    with pytest.raises(TooManyFailuresError) as e:
        embed(open_source(str(d)), tmp_path / "o.h5", EmbedConfig(image_size=SIZE, device="cpu"), progress=False)
    assert (e.value.summary.rows, e.value.summary.failures) == (0, 2)
    emb = open_embeddings(tmp_path / "o.h5", verify=True)
    assert emb.n == 0 and emb.embeddings().shape == (0, 1280) and len(emb.failures()) == 2
    s = embed(
        open_source(str(d)),
        tmp_path / "o.h5",
        EmbedConfig(image_size=SIZE, device="cpu", max_failures=2),
        progress=False,
    )
    assert s.failures == 2  # already complete: the re-run only re-checks the failure budget
