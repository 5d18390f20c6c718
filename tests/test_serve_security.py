"""The service treats every request and every stored name as hostile: it serves only images of
the collection (inside an item's recorded root, or its own upload store) with content types from
the decoded format, bounds what a request may cost before decoding anything, answers an oversized
body with a 413 the client can read, names no server path, and parses ids strictly."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from helpers import write_embeddings
from PIL import Image

import hashindex
from hashindex.core.config import ServeConfig
from hashindex.serve.app import create_app

DIM = 16


def fake_embed(images):
    """Features from the mean colour: enough to search by image without a backbone."""
    return np.stack([np.resize(im.astype(np.float32).mean((0, 1)), DIM) for im in images])


def _png(size, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """An index of a folder of PNGs, plus hostile names: an absolute path, a `..` escape and a
    link inside the folder that points outside it (all to a real image that is not the collection's)."""
    d = tmp_path_factory.mktemp("secure")
    root, outside = d / "photos", d / "private"
    root.mkdir()
    outside.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"im{i:02d}.png")
        names.append(f"im{i:02d}.png")
    (outside / "secret.png").write_bytes(_png((12, 12), (1, 2, 3)))
    os.symlink(outside / "secret.png", root / "link.png")
    names += [str(outside / "secret.png"), "../private/secret.png", "link.png"]
    x = rng.standard_normal((len(names), DIM)).astype(np.float32)
    write_embeddings(d / "e.h5", x, names=names, source={"kind": "folder", "location": str(root), "n": len(names)})
    hashindex.fit_probe(d / "e.h5", d / "probe", method="itq", bits=16)
    hashindex.build_index(d / "e.h5", d / "probe", d / "index", kind="flat")
    return d


@pytest.fixture
def client(collection, tmp_path):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(collection / "index", index)
    app = create_app(index, ServeConfig(allow_writes=True, token="t"), embed_fn=fake_embed)
    with TestClient(app) as c:
        yield c


def test_only_the_collections_images_are_served(client):
    assert client.get("/items/0/image").status_code == 200
    for item_id in (24, 25, 26):  # absolute name, '..' escape, link out of the root
        r = client.get(f"/items/{item_id}/image")
        assert r.status_code == 404, (item_id, r.status_code)
        assert r.content != _png((12, 12), (1, 2, 3))


def test_uploads_are_stored_and_served_as_the_images_they_are(client, collection, tmp_path):
    for name in ("x.html", "x.svg", "x.js", "../../escape.png"):
        r = client.post(
            "/items", files={"image": (name, _png((10, 10)), "text/html")}, headers={"Authorization": "Bearer t"}
        )
        assert r.status_code == 201, r.text
        new = r.json()["ids"][0]
        img = client.get(f"/items/{new}/image")
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert img.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in img.headers["content-security-policy"]
        assert Image.open(io.BytesIO(img.content)).size == (10, 10)
    stored = sorted(p.name for p in (tmp_path / "index" / "uploads").iterdir())
    assert stored and all(p.endswith(".png") and p.split(".")[0].isdigit() for p in stored), stored
    assert not (collection.parent / "escape.png").exists()


def test_every_response_carries_nosniff_and_a_restrictive_policy(client):
    for path in ("/", "/app.js", "/stats", "/items/0", "/items/999999"):
        r = client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp, path
    assert "<script>" not in client.get("/").text  # the page's script is a file of its own


@pytest.mark.parametrize("raw", ["+5", "00005", "1_0", "\u0665", "-1", " 5", "5.0", "0x5", "9" * 20])
def test_ids_are_canonical_ascii_decimals(client, raw):
    r = client.get(f"/items/{raw}")
    assert r.status_code in (400, 404) and "error" in r.json()
    assert client.post("/search", json={"id": raw}).status_code in (400, 404)
    assert client.get("/items/5").status_code == 200


def test_errors_name_no_server_path(client, collection):
    answers = [
        client.post("/search", files={"image": ("q.png", b"not an image at all", "image/png")}),
        client.post("/search", files={"image": ("q.png", b"", "image/png")}),
        client.get("/items/26/image"),
        client.post("/search", json={"embedding": [1.0, 2.0]}),
    ]
    for r in answers:
        assert r.status_code >= 400
        text = r.text
        assert str(collection) not in text and "/tmp" not in text and "/home" not in text, text


def test_search_takes_one_image_and_refuses_pixel_bombs_before_decoding(client):
    big = _png((6500, 6500))  # 42 MP of one colour: a few hundred KB of PNG
    t0 = time.perf_counter()
    many = client.post("/search", files=[("image", (f"q{i}.png", big, "image/png")) for i in range(6)])
    one = client.post("/search", files={"image": ("q.png", big, "image/png")})
    assert time.perf_counter() - t0 < 1.0
    assert many.status_code == 400 and "one image" in many.json()["error"]
    assert one.status_code == 413 and "pixels" in one.json()["error"]
    ok = client.post("/search", files={"image": ("q.png", _png((30, 30)), "image/png")}, data={"k": "3"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3


def test_filters_apply_to_the_api(client):
    r = client.post("/search", json={"id": 3, "k": 5, "filter": {"id": [1, 2, 3, 4]}})
    assert r.status_code == 200 and {h["id"] for h in r.json()["results"]} <= {1, 2, 3, 4}
    assert client.post("/search", json={"id": 3, "filter": {"nope": "x"}}).status_code == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = """
import sys, numpy as np, uvicorn
sys.path.insert(0, sys.argv[3])
from test_serve_security import fake_embed
from hashindex.core.config import ServeConfig
from hashindex.serve.app import create_app
uvicorn.run(create_app(sys.argv[1], ServeConfig(), embed_fn=fake_embed), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@pytest.fixture
def server(collection):
    port = _free_port()
    tests = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(collection / "index"), str(port), tests])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
    yield url, proc.pid
    proc.terminate()
    proc.wait(10)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def _post(url: str, body: bytes, ctype: str) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _multipart(files: list[bytes]) -> tuple[bytes, str]:
    parts = [
        b'--XX\r\nContent-Disposition: form-data; name="image"; filename="q%d.png"\r\nContent-Type: image/png\r\n\r\n'
        % i
        + f
        + b"\r\n"
        for i, f in enumerate(files)
    ]
    return b"".join(parts) + b"--XX--\r\n", "multipart/form-data; boundary=XX"


def test_a_burst_of_large_images_costs_the_server_little(server):
    url, pid = server
    before = _peak_rss_mb(pid)
    body, ctype = _multipart([_png((6000, 6000))] * 6)  # 36 MP each, under the per-image limit
    t0 = time.perf_counter()
    assert _post(url + "/search", body, ctype) == 400
    assert time.perf_counter() - t0 < 1.0
    assert _peak_rss_mb(pid) - before < 200


def test_an_oversized_body_gets_a_readable_413(server):
    url, _ = server
    # Python's urllib sends the whole body before reading: with a reset it would raise instead.
    assert _post(url + "/search", b"{" + b" " * (17 << 20) + b"}", "application/json") == 413


def test_serve_warns_beyond_loopback_and_about_tokens_on_the_command_line(collection, monkeypatch, tmp_path):
    import hashindex.serve.app as serve_app
    from hashindex.cli.main import cli

    calls = []
    monkeypatch.setattr(serve_app, "serve_index", lambda index, config: calls.append(config))
    r = CliRunner().invoke(cli, ["serve", str(collection / "index"), "--host", "0.0.0.0", "--port", str(_free_port())])
    assert r.exit_code == 0, r.output
    assert "beyond this machine" in r.output and calls[-1].host == "0.0.0.0"
    r = CliRunner().invoke(
        cli, ["serve", str(collection / "index"), "--allow-writes", "--token", "s3cret", "--port", str(_free_port())]
    )
    assert r.exit_code == 0 and "visible to other users" in r.output
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    r = CliRunner().invoke(
        cli,
        ["serve", str(collection / "index"), "--allow-writes", "--token-file", str(token), "--port", str(_free_port())],
    )
    assert r.exit_code == 0 and "visible" not in r.output and calls[-1].token == "from-a-file"


def test_serve_refuses_a_busy_port_before_loading(collection):
    from hashindex.cli.main import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        t0 = time.perf_counter()
        r = CliRunner().invoke(cli, ["serve", str(collection / "index"), "--port", str(s.getsockname()[1])])
    assert r.exit_code == 2 and "error" in r.output.lower() and "port" in r.output
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_upload_is_box_reduced_like_a_numpy_block_mean(orientation):
    """A large upload is decoded, then averaged in f×f blocks (f keeps both sides at or above the
    model's base size) before any conversion; EXIF orientation still applies."""
    from hashindex.serve.images import decode_upload

    rng = np.random.default_rng(orientation)
    raw = rng.integers(0, 256, (403, 1010, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, "PNG", exif=exif)
    full, fmt = decode_upload(buf.getvalue())
    small, _ = decode_upload(buf.getvalue(), draft=100)
    turns = 1 if orientation == 6 else 0  # orientation 6: shown turned 90° clockwise
    assert fmt == "PNG" and np.array_equal(full, np.rot90(raw, -turns))
    f, h, w = 4, 100, 252  # 403 // 100; blocks are taken on the stored grid (the last ones partial)
    want = raw[: h * f, : w * f].reshape(h, f, w, f, 3).mean((1, 3))
    back = np.rot90(small, turns)
    assert back.shape == (101, 253, 3)
    assert np.abs(back[:h, :w].astype(float) - want).max() <= 1
