"""Near-duplicates in the service: the groups over HTTP, the check of an uploaded image, keep-one
removal through the same commits as DELETE, and the page in headless Chromium (groups shown, a
keep removes the others), with the index's images in another folder than the server's."""

from __future__ import annotations

import io
import os
import socket
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import FAKE_SPEC, write_embeddings
from PIL import Image

import hashindex
from hashindex.core.config import ServeConfig
from hashindex.serve.app import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BASES, COPIES = 40, 12  # copies of the first COPIES images, each a slightly brightened version


def features(rgb: np.ndarray) -> np.ndarray:
    """Features of an image: its 8x8 thumbnail, centred (near copies have near features)."""
    small = np.asarray(Image.fromarray(rgb).resize((8, 8), Image.BILINEAR), np.float32).mean(2).ravel()
    return small - small.mean()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("dup")
    root = d / "photos"
    root.mkdir()
    rng = np.random.default_rng(3)
    images, names = [], []
    for i in range(BASES):
        rgb = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((6, 6, 1))).astype(np.uint8)
        images.append(rgb)
        names.append(f"p{i:02d}.png")
    for i in range(COPIES):
        images.append(np.clip(images[i].astype(int) + 6, 0, 255).astype(np.uint8))
        names.append(f"p{i:02d}-copy.png")
    for rgb, name in zip(images, names):
        Image.fromarray(rgb).save(root / name)
    x = np.stack([features(im) for im in images]).astype(np.float32)
    src = {"kind": "folder", "location": str(root), "n": len(names)}
    write_embeddings(d / "e.h5", x, names=names, spec=dict(FAKE_SPEC, image_size=48), source=src)
    hashindex.fit_probe(d / "e.h5", d / "probe", method="itq", bits=32)
    hashindex.build_index(d / "e.h5", d / "probe", d / "index", kind="flat")
    return d


def _copy(photos, tmp_path):
    import shutil

    shutil.copytree(photos / "index", tmp_path / "index")
    return tmp_path / "index"


def embed_fn(images):
    return np.stack([features(im) for im in images])


def test_groups_check_and_keep_over_http(photos, tmp_path):
    index = _copy(photos, tmp_path)
    app = create_app(index, ServeConfig(allow_writes=True, token="t"), embed_fn=embed_fn)
    with TestClient(app) as c:
        data = c.get("/duplicates", params={"radius_bits": 6, "min_cosine": 0.95}).json()
        got = {frozenset(it["id"] for it in g["items"]) for g in data["groups"]}
        assert got == {frozenset([i, BASES + i]) for i in range(COPIES)}, got
        buf = io.BytesIO()
        Image.open(photos / "photos" / "p03.png").save(buf, "PNG")
        r = c.post(
            "/duplicates",
            files={"image": ("q.png", buf.getvalue(), "image/png")},
            data={"radius_bits": "6", "min_cosine": "0.95"},
        )
        assert r.status_code == 200 and {d["id"] for d in r.json()["duplicates"]} == {3, BASES + 3}
        # a mirrored upload: its features are another picture's, its pixels are p03's
        mirrored = io.BytesIO()
        Image.open(photos / "photos" / "p03.png").transpose(Image.FLIP_LEFT_RIGHT).save(mirrored, "PNG")
        r = c.post(
            "/duplicates",
            files={"image": ("m.png", mirrored.getvalue(), "image/png")},
            data={"radius_bits": "16", "min_cosine": "0.95"},
        )
        found = r.json()["duplicates"]
        assert {d["id"] for d in found} == {3, BASES + 3}, found
        assert all(d["cosine"] < 0.95 and d["pixels"] >= r.json()["min_pixels"] for d in found)
        assert {
            d["id"]
            for d in c.post("/duplicates", json={"id": 5, "radius_bits": 6, "min_cosine": 0.95}).json()["duplicates"]
        } == {BASES + 5}
        assert c.post("/duplicates/keep", json={"keep": 3, "remove": [BASES + 3]}).status_code == 401
        r = c.post("/duplicates/keep", json={"keep": 3, "remove": [BASES + 3]}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 200 and r.json()["removed"] == [BASES + 3]
        assert c.get(f"/items/{BASES + 3}").status_code == 404
        left = c.get("/duplicates", params={"radius_bits": 6, "min_cosine": 0.95}).json()["groups"]
        assert len(left) == COPIES - 1 and all(BASES + 3 not in {it["id"] for it in g["items"]} for g in left)
    assert hashindex.open_index(index).info()["removed_since_build"] == 1  # a commit like any remove


def test_groups_request_bounded_by_pairs(photos, tmp_path):
    """GET /duplicates with a radius that would hold more candidate pairs than the service allows
    is answered 400 (the groups at the default radius still come back)."""
    index = _copy(photos, tmp_path)
    app = create_app(index, ServeConfig(max_duplicate_pairs=50), embed_fn=embed_fn)
    with TestClient(app) as c:
        r = c.get("/duplicates", params={"radius_bits": 16})
        assert r.status_code == 400 and "smaller radius" in r.json()["error"], r.text
        assert c.get("/duplicates", params={"radius_bits": 6, "min_cosine": 0.95}).status_code == 200


@pytest.fixture
def server(photos, tmp_path, monkeypatch):
    import uvicorn

    index = _copy(photos, tmp_path)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the images live in another folder than the server's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(index, ServeConfig(allow_writes=True, token="t"), embed_fn=embed_fn)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", index
    srv.should_exit = True
    t.join(10)


def _wait(page, expression: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def test_duplicates_page_in_headless_chromium(server):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    url, index = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 4000})  # every lazy thumbnail in view
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            _wait(page, "document.getElementById('stats').textContent.includes('items')")
            page.click("#show-dups")
            _wait(page, "document.querySelectorAll('#groups .group').length > 0")
            groups = page.query_selector_all("#groups .group")
            assert len(groups) == COPIES  # the default thresholds find every planted copy here
            imgs = "[...document.querySelectorAll('#groups img')]"
            _wait(page, f"{imgs}.every(i => i.complete)")
            assert page.evaluate(f"{imgs}.every(i => i.naturalWidth > 0)")  # thumbnails from the photos' folder
            first = groups[0]
            ids = [m.get_attribute("data-id") for m in first.query_selector_all(".member")]
            page.fill("#token", "t")
            first.query_selector_all(".member")[1].query_selector("button").click()  # keep the second
            _wait(page, f"document.querySelectorAll('#groups .group').length === {COPIES - 1}")
            assert "removed 1" in page.inner_text("#status")
            assert not errors, errors
        finally:
            browser.close()
    ix = hashindex.open_index(index)
    assert ix.item(int(ids[1]))["id"] == int(ids[1])
    with pytest.raises(hashindex.InputError):
        ix.item(int(ids[0]))
