"""The HTTP API through httpx (FastAPI's TestClient): shapes, errors as 4xx JSON, token-guarded
writes that are durable and searchable at once, commits by other processes picked up, and a
bounded fuzz of malformed requests that must never get a 5xx."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import write_embeddings
from PIL import Image

from hashindex import build_index
from hashindex.core.config import FitConfig, ServeConfig
from hashindex.live.live_index import open_live
from hashindex.probe.fit import fit_probe
from hashindex.serve.app import create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fake_embed(images):
    """A stand-in backbone: the mean colour of the image, centred (3-d features)."""
    return np.stack([im.reshape(-1, 3).mean(0) / 255 - 0.5 for im in images]).astype(np.float32)


def png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), rgb, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def index_dir(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (400, 3)).astype(np.float32)
    emb = write_embeddings(tmp_path / "e.h5", x, labels=np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 400)])
    fit_probe(emb, FitConfig(method="lsh", bits=16), progress=False).save(tmp_path / "p")
    build_index(emb, tmp_path / "p", tmp_path / "idx", kind="flat")
    return tmp_path / "idx", x


@pytest.fixture
def client(index_dir):
    app = create_app(index_dir[0], ServeConfig(allow_writes=True, token=TOKEN, poll_seconds=0.05), embed_fn=fake_embed)
    with TestClient(app) as c:
        yield c


def test_search_shapes(client, index_dir):
    _, x = index_dir
    for body in ({"embedding": x[7].tolist(), "k": 5}, {"id": 7, "k": 5}):
        r = client.post("/search", json=body)
        assert r.status_code == 200
        doc = r.json()
        assert set(doc) == {"results", "took_ms"} and len(doc["results"]) == 5
        assert set(doc["results"][0]) == {"id", "name", "label", "distance"}
        assert doc["results"][0]["id"] == 7 and doc["results"][0]["distance"] == 0
    r = client.post("/search", json={"id": 7, "k": 5, "rerank": 4})
    assert r.json()["results"][0]["score"] == pytest.approx(1.0)
    r = client.post("/search", json={"id": 7, "k": 500})
    assert len(r.json()["results"]) == 400  # k beyond ntotal gives everything
    r = client.post("/search", files={"image": ("q.png", png((200, 40, 90)), "image/png")}, data={"k": "3"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    snap = open_live(index_dir[0]).snapshot
    rows = snap.search(fake_embed([np.full((24, 24, 3), (200, 40, 90), np.uint8)]), 3).I[0]
    assert [h["id"] for h in r.json()["results"]] == snap.ids[rows].tolist()
    # a search takes one image: more are refused, not silently cut to the first
    two = [("image", ("a.png", png((200, 40, 90)), "image/png")), ("image", ("b.png", png(5), "image/png"))]
    r = client.post("/search", files=two, data={"k": "3"})
    assert r.status_code == 400 and "one image" in r.json()["error"]


def test_items_health_stats(client):
    assert client.get("/health").json()["status"] == "ok"
    stats = client.get("/stats").json()
    assert stats["ntotal"] == 400 and stats["bits"] == 16 and stats["kind"] == "flat" and "probe" in stats
    item = client.get("/items/3").json()
    assert item["id"] == 3 and item["name"] == "item3" and item["label"] in {"0", "1", "2", "3"}
    assert client.get("/items/400").status_code == 404
    for odd in ("007", "+3", "3.0", " 3", "3 ", "0x3", "-0", "٣"):  # ids in URLs are canonical decimals
        r = client.get(f"/items/{odd}")
        assert r.status_code == 400 and "error" in r.json(), (odd, r.status_code)
    r = client.get("/items/3/image")  # a synthetic item has no image: a clear 404
    assert r.status_code == 404 and "no image" in r.json()["error"]
    assert client.get("/").text.startswith("<!doctype html>")


def test_writes_need_the_token_and_are_durable(client, index_dir):
    image = {"image": ("new photo.png", png((10, 250, 10)), "image/png")}
    assert client.post("/items", files=image).status_code == 401
    assert client.post("/items", files=image, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/items", files=image, headers={"Authorization": TOKEN}).status_code == 401
    assert client.delete("/items/3").status_code == 401
    r = client.post("/items", files=image, headers=AUTH)
    assert r.status_code == 201
    new_id = r.json()["ids"][0]
    assert new_id == 400
    # searchable at once, through the API, and durable: a fresh open of the folder has it
    hits = client.post(
        "/search", files={"image": ("q.png", png((10, 250, 10)), "image/png")}, data={"k": "1", "rerank": "50"}
    ).json()["results"]
    assert hits[0]["id"] == new_id and hits[0]["name"] == "new photo.png"
    reopened = open_live(index_dir[0])
    assert new_id in reopened.snapshot.ids and reopened.snapshot.item(new_id)["name"] == "new photo.png"
    img = client.get(f"/items/{new_id}/image")
    assert img.status_code == 200 and img.content == image["image"][1]  # kept in the index folder
    assert img.headers["content-type"] == "image/png"
    # under a name the server chose (the id, and the suffix of the decoded format), not the client's
    stored = sorted(p.relative_to(index_dir[0]).as_posix() for p in (index_dir[0] / "uploads").iterdir())
    assert stored == [f"uploads/{new_id}.png"] and (index_dir[0] / stored[0]).read_bytes() == image["image"][1]
    jpeg = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 99, np.uint8)).save(jpeg, "JPEG")
    r = client.post("/items", files={"image": ("../../evil.png", jpeg.getvalue(), "image/png")}, headers=AUTH)
    assert r.status_code == 201
    jpeg_id = r.json()["ids"][0]
    assert (index_dir[0] / "uploads" / f"{jpeg_id}.jpg").read_bytes() == jpeg.getvalue()
    assert not (index_dir[0].parent / "evil.png").exists() and not (index_dir[0] / "evil.png").exists()
    assert client.get(f"/items/{jpeg_id}/image").headers["content-type"] == "image/jpeg"
    assert client.delete("/items/3", headers=AUTH).json()["removed"] == 3
    assert client.get("/items/3").status_code == 404 and 3 not in open_live(index_dir[0]).snapshot.ids
    assert client.delete("/items/3", headers=AUTH).status_code == 404


def test_writes_off_by_default(index_dir):
    with TestClient(create_app(index_dir[0], ServeConfig(), embed_fn=fake_embed)) as c:
        r = c.post("/items", files={"image": ("a.png", png(5), "image/png")}, headers=AUTH)
        assert r.status_code == 403 and "--allow-writes" in r.json()["error"]
        assert c.delete("/items/1", headers=AUTH).status_code == 403


def test_server_follows_commits_of_other_processes(client, index_dir):
    other = open_live(index_dir[0])  # another writer, as the CLI would be
    other.add(index_dir[1][:2], ["cli-a", "cli-b"])
    deadline = time.monotonic() + 10
    while client.get("/health").json()["generation"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/health").json() == {"status": "ok", "generation": 1, "ntotal": 402}
    item = client.get("/items/401").json()
    assert item["name"] == "cli-b" and item["label"] == ""  # unlabelled: an empty label, not null


def test_item_images_only_from_inside_their_root(index_dir, tmp_path):
    """An item's image is read only from inside the folder its name is relative to: names that
    climb out, absolute names and links leading out get a 404 that names no server path."""
    import os

    root, outside = tmp_path / "photos", tmp_path / "private.png"
    root.mkdir()
    (root / "ok.png").write_bytes(png((1, 2, 3)))
    outside.write_bytes(png((4, 5, 6)))
    os.symlink(outside, root / "link.png")
    names = ["ok.png", "../private.png", str(outside), "link.png", "missing.png"]
    ids = open_live(index_dir[0]).add(index_dir[1][: len(names)], names, roots=[str(root)], root_id=[0] * len(names))
    with TestClient(create_app(index_dir[0], ServeConfig(), embed_fn=fake_embed)) as c:
        r = c.get(f"/items/{ids[0]}/image")
        assert r.status_code == 200 and r.content == png((1, 2, 3)) and r.headers["content-type"] == "image/png"
        for i in ids[1:]:
            r = c.get(f"/items/{i}/image")
            assert r.status_code == 404 and "no image" in r.json()["error"], (i, r.status_code, r.text)
            assert str(tmp_path) not in r.text and "private" not in r.text


def test_bad_requests_get_4xx_json(client, index_dir):
    cases = [
        dict(json={"embedding": [1.0, 2.0], "k": 3}),  # wrong width
        dict(content=b'{"embedding": [1, NaN, 2]}', headers={"content-type": "application/json"}),
        dict(json={"id": 10**6}),
        dict(json={"id": -1}),
        dict(json={"id": "abc"}),
        dict(json={"id": 1, "embedding": [1, 2, 3]}),
        dict(json={"embedding": [0.1, 0.2, 0.3], "k": 0}),
        dict(json={"embedding": [0.1, 0.2, 0.3], "k": 10**9}),
        dict(json={"embedding": [0.1, 0.2, 0.3], "rerank": "x"}),
        dict(json=[1, 2, 3]),
        dict(content=b"{not json", headers={"content-type": "application/json"}),
        dict(files={"image": ("a.png", b"not an image", "image/png")}),
        dict(files={"other": ("a.png", png(3), "image/png")}),
        dict(files={"image": ("a.png", b"", "image/png")}),
        dict(content=b"x" * (17 << 20), headers={"content-type": "application/octet-stream"}),
    ]
    for kw in cases:
        r = client.post("/search", **kw)
        assert 400 <= r.status_code < 500, (kw.keys(), r.status_code, r.text[:200])
        assert "error" in r.json()
        assert str(index_dir[0].parent) not in r.text  # no server path in any answer
    assert client.post("/search", content=b"x" * (17 << 20)).status_code == 413


def _random_request(rng):
    """One malformed (or odd) request: random method, path, headers and body."""
    paths = [
        "/search",
        "/items",
        "/items/1",
        "/items/abc/image",
        "/items/99999999999999999999",
        "/items/-1",
        "/items/3/image?size=5",
        "/stats",
        "/health",
        "/",
        "/items/1/image?size=x",
        "/nope",
        "/search?k=3",
    ]
    values = [
        None,
        True,
        -1,
        0,
        1,
        2**63,
        1e308,
        -0.0,
        "5",
        "",
        "x" * 50,
        [],
        {},
        [1, 2],
        [0.1] * 3,
        [[0.1, 0.2, 0.3]],
        ["a", "b", "c"],
    ]
    method = rng.choice(["GET", "POST", "DELETE", "PUT", "PATCH"])
    path = paths[rng.integers(len(paths))]
    kind = rng.integers(6)
    headers = {}
    if rng.random() < 0.3:
        headers["Authorization"] = rng.choice(["Bearer " + TOKEN, "Bearer nope", "Basic x", TOKEN])
    if kind == 0:
        doc = {
            str(rng.choice(["embedding", "id", "k", "rerank", "asymmetric", "zzz"])): values[rng.integers(len(values))]
            for _ in range(rng.integers(0, 4))
        }
        return (
            method,
            path,
            dict(content=json.dumps(doc).encode(), headers={**headers, "content-type": "application/json"}),
        )
    if kind == 1:
        return (
            method,
            path,
            dict(
                content=bytes(rng.integers(0, 256, rng.integers(0, 300), dtype=np.uint8)),
                headers={
                    **headers,
                    "content-type": str(
                        rng.choice(
                            [
                                "application/json",
                                "multipart/form-data",
                                "multipart/form-data; boundary=zz",
                                "text/plain",
                                "image/png",
                            ]
                        )
                    ),
                },
            ),
        )
    if kind == 2:
        blob = (
            png(int(rng.integers(256)))
            if rng.random() < 0.3
            else bytes(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8))
        )
        field = str(rng.choice(["image", "file", "k"]))
        data = {str(rng.choice(["k", "rerank", "asymmetric"])): str(values[rng.integers(len(values))])}
        return (
            method,
            path,
            dict(
                files={field: (str(rng.choice(["a.png", "x", "../../etc/passwd", "ü.jpg"])), blob, "image/png")},
                data=data,
                headers=headers,
            ),
        )
    if kind == 3:
        truncated = png(7)[: int(rng.integers(1, 60))]
        return method, path, dict(files={"image": ("t.png", truncated, "image/png")}, headers=headers)
    if kind == 4:
        nested = "[" * int(rng.integers(1, 5000)) + "]" * int(rng.integers(0, 5000))
        return method, path, dict(content=nested.encode(), headers={**headers, "content-type": "application/json"})
    return method, path, dict(headers=headers)


def test_fuzz_1000_malformed_requests_never_5xx(client):
    rng = np.random.default_rng(42)
    deadline = time.monotonic() + 120
    statuses = {}
    for n in range(1000):
        method, path, kw = _random_request(rng)
        r = client.request(method, path, **kw)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (
            method,
            path,
            {k: (v if k != "content" else v[:80]) for k, v in kw.items()},
            r.text[:300],
        )
        if r.status_code >= 400:
            assert "error" in r.json()
        if time.monotonic() > deadline:
            pytest.fail(f"fuzz loop exceeded its time bound after {n} requests")
    assert sum(v for s, v in statuses.items() if s >= 400) > 500  # mostly refused, as malformed input should be
    assert client.get("/health").json()["status"] == "ok"


def test_cli_serve_needs_a_token_for_writes(index_dir):
    from click.testing import CliRunner

    from hashindex.cli.main import cli

    r = CliRunner().invoke(cli, ["serve", str(index_dir[0]), "--allow-writes"], env={"HASHINDEX_TOKEN": ""})
    assert r.exit_code == 2 and "--token" in r.output
