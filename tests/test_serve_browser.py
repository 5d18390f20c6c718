"""The service with the real backbone on Fashion-MNIST: image search through the API, and the web
page in a real headless Chromium (Debian's, driven by Playwright) on a server bound to 127.0.0.1."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashindex import build_index
from hashindex.core.config import FitConfig, ServeConfig
from hashindex.embedding.sources import open_source
from hashindex.probe.fit import fit_probe
from hashindex.serve.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def fm_index(fmnist, tmp_path_factory):
    db, _ = fmnist
    d = tmp_path_factory.mktemp("fm_serve")
    fit_probe(db, FitConfig(method="itq", bits=32), progress=False).save(d / "probe")
    build_index(db, d / "probe", d / "idx")
    return d / "idx"


def _train_png(i: int, path) -> bytes:
    rgb = open_source("fashion-mnist", split="train", limit=i + 1).load(i)
    Image.fromarray(rgb).save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def server(fm_index):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(
            create_app(fm_index, ServeConfig(device="cpu")), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


def test_image_search_finds_the_item_itself(server, tmp_path):
    import httpx

    with httpx.Client(base_url=server, timeout=60) as c:
        for i in (0, 5, 11):
            blob = _train_png(i, tmp_path / f"q{i}.png")
            r = c.post("/search", files={"image": (f"q{i}.png", blob, "image/png")}, data={"k": "5", "rerank": "4"})
            assert r.status_code == 200, r.text
            top = r.json()["results"][0]
            assert top["id"] == i and top["name"] == f"train/{i}"
        img = c.get("/items/5/image")  # rendered from the IDX source
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(img.content)).convert("RGB")),
            open_source("fashion-mnist", limit=6).load(5),
        )


def _wait(page, expression: str, timeout_s: float = 60) -> None:
    """Poll a JavaScript expression until it is truthy. ``page.evaluate`` runs it through the
    DevTools protocol; ``page.wait_for_function`` would compile it inside the page, which the
    page's content-security policy (script-src 'self', no eval) rightly refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def test_page_in_headless_chromium(server, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    query = tmp_path / "query.png"
    _train_png(0, query)
    shot = tmp_path / "serve.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            console = []
            page.on("console", lambda m: console.append(m.text))
            page.on("pageerror", lambda e: console.append(str(e)))
            page.goto(server + "/")
            _wait(page, "document.getElementById('stats').textContent.includes('items')")
            # the script and the style are files of their own (the policy allows no inline script)
            scripts = page.evaluate("[...document.scripts].map(s => [s.getAttribute('src'), s.textContent.trim()])")
            assert scripts == [["/app.js", ""]]
            styles = page.evaluate(
                "[...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.getAttribute('href'))"
            )
            assert styles == ["/app.css"] and page.evaluate("document.querySelectorAll('style').length") == 0
            page.set_input_files("#file", str(query))
            page.wait_for_selector("#grid .hit", timeout=60_000)
            imgs = "[...document.querySelectorAll('#grid .hit img')]"
            _wait(page, f"{imgs}.length > 0 && {imgs}.every(i => i.complete)")
            hits = page.query_selector_all("#grid .hit")
            assert len(hits) == 20
            first = hits[0]
            assert first.get_attribute("data-id") == "0"
            assert (
                "#1" in first.inner_text() and "train/0" in first.inner_text() and "Ankle boot" in first.inner_text()
            )  # train/0 is an ankle boot
            assert "ms" in page.inner_text("#status")
            page.screenshot(path=str(shot), full_page=False)
            second_id = hits[1].get_attribute("data-id")
            hits[1].click()  # a click searches with that result
            _wait(
                page, f"document.getElementById('status').textContent.includes('results for item {second_id} ')"
            )  # not the "searching item …" that comes first
            # the clicked item comes back at distance 0, first unless an item with a smaller id has its very code
            # (the distance as the page shows it: "#rank · distance D · label")
            exact = [
                h.get_attribute("data-id")
                for h in page.query_selector_all("#grid .hit")
                if re.search(r"\bdistance (\d+)\b", h.query_selector(".meta").inner_text()).group(1) == "0"
            ]
            assert second_id in exact and exact[0] == page.query_selector("#grid .hit").get_attribute("data-id")
            # every hit's image loaded (a broken one has no natural width), and nothing broke the policy
            assert page.evaluate(f"{imgs}.every(i => i.naturalWidth > 0)")
            assert not [m for m in console if "Content Security Policy" in m or "Error" in m], console
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("HASHINDEX_SCREENSHOT"):  # how docs/serve.png is made
        shutil.copyfile(shot, os.environ["HASHINDEX_SCREENSHOT"])


def test_cli_add_images_with_the_index_backbone(tmp_path):
    """`hashindex add` embeds image files with the recorded backbone; `query` then finds them."""
    import json

    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from hashindex.cli.main import cli
    from hashindex.core.config import EmbedConfig
    from hashindex.embedding.run import embed
    from hashindex.live.live_index import open_live
    from hashindex.store.reader import open_embeddings

    embed(
        open_source("fashion-mnist", split="train", limit=60),
        tmp_path / "db.h5",
        EmbedConfig(image_size=64, device="cpu"),
        progress=False,
    )
    db = open_embeddings(tmp_path / "db.h5")
    fit_probe(db, FitConfig(method="itq", bits=32), progress=False).save(tmp_path / "probe")
    idx = tmp_path / "idx"
    build_index(db, tmp_path / "probe", idx)
    test = open_source("fashion-mnist", split="test", limit=3)
    (tmp_path / "new").mkdir()
    for i in range(3):
        Image.fromarray(test.load(i)).save(tmp_path / "new" / f"t{i}.png")
    (tmp_path / "new" / "broken.png").write_bytes(b"not a png")
    r = CliRunner().invoke(cli, ["-q", "add", str(idx), str(tmp_path / "new"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    # -q hides the "added" line, not the warning about the data
    assert "ids 60..62" not in r.output and "1 images could not be decoded" in r.output
    snap = open_live(idx).snapshot
    assert snap.ids[-3:].tolist() == [60, 61, 62]
    # named relative to the folder given, which is recorded as the item's root
    assert snap.item(61)["name"] == "t1.png"
    assert Path(snap.root_of(int(snap.positions([61])[0]))).resolve() == (tmp_path / "new").resolve()
    with TestClient(create_app(idx, ServeConfig(device="cpu"), embed_fn=lambda images: None)) as c:
        r = c.get("/items/61/image")  # served from inside that root
        assert r.status_code == 200 and r.content == (tmp_path / "new" / "t1.png").read_bytes()
    r = CliRunner().invoke(
        cli,
        ["query", str(idx), str(tmp_path / "new" / "t1.png"), "-k", "3", "--rerank", "4", "--device", "cpu", "--json"],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["results"][0]["id"] == 61
