"""What the serving benchmarks share: a `hashindex serve` child process on 127.0.0.1, a
keep-alive HTTP client, a closed-loop load generator bounded in requests and seconds, the small
Fashion-MNIST image index they search, and how a run is recorded (JSON beside the command, date,
machine and load; a Markdown table of targets)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`hashindex serve` in a child process (the library entry point, so options can be set)."""

    def __init__(self, index: Path, **config):
        self.port = free_port()
        code = (
            "import sys, json; from hashindex import ServeConfig, serve_index; "
            "serve_index(sys.argv[1], ServeConfig(**json.loads(sys.argv[2])))"
        )
        cfg = dict(config, host="127.0.0.1", port=self.port, device="cpu")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(index), json.dumps(cfg)], stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)


class Client:
    """One keep-alive HTTP/1.1 connection (the standard library's: a load generator should spend
    as little of the shared CPU as it can)."""

    def __init__(self, url: str):
        import http.client

        host, port = url.split("//")[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def post_json(self, path: str, doc) -> int:
        return self._send("POST", path, json.dumps(doc).encode(), "application/json")

    def post_image(self, path: str, blob: bytes, fields: dict) -> int:
        return self.post_files(path, [("image", blob)], fields)

    def post_files(self, path: str, files: list[tuple[str, bytes]], fields: dict) -> int:
        """A multipart form: ``fields`` as text parts, then each ``(field, bytes)`` as a PNG file."""
        b = "hashindexbenchboundary"
        parts = [
            f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
        ]
        for i, (field, blob) in enumerate(files):
            head = f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="q{i}.png"\r\n'
            parts.append((head + "Content-Type: image/png\r\n\r\n").encode() + blob + b"\r\n")
        parts.append(f"--{b}--\r\n".encode())
        return self._send("POST", path, b"".join(parts), f"multipart/form-data; boundary={b}")

    def _send(self, method, path, body, ctype) -> int:
        self.conn.request(method, path, body=body, headers={"Content-Type": ctype})
        r = self.conn.getresponse()
        r.read()
        return r.status

    def close(self):
        self.conn.close()


def closed_loop(url: str, make_request, clients: int, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads, each sending its next request when the previous one is answered."""
    lat, errors, lock = [], [], threading.Lock()
    counter = iter(range(max_requests))
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    def client(cid: int):
        rng = np.random.default_rng(cid)
        c = Client(url)
        try:
            make_request(c, rng)  # warm-up, not counted
            while time.perf_counter() < deadline:
                with lock:
                    if next(counter, None) is None:
                        return
                s = time.perf_counter()
                status = make_request(c, rng)
                dt = time.perf_counter() - s
                with lock:
                    (lat if status == 200 else errors).append(dt)
        finally:
            c.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    a = np.array(lat) * 1000
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": len(errors),
        "seconds": round(wall, 3),
        "qps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def image_index(work: Path, n_db: int) -> Path:
    """A 64-bit ITQ index of ``n_db`` Fashion-MNIST training images (EfficientNet-Lite0 at 112 px)."""
    import hashindex

    db = work / "fm.h5"
    hashindex.embed(
        "fashion-mnist", db, limit=n_db, image_size=112, interpolation="bilinear", crop_pct=1.0, device="cpu"
    )
    hashindex.fit_probe(db, work / "fm-probe", method="itq", bits=64)
    hashindex.build_index(db, work / "fm-probe", work / "fm", kind="flat")
    return work / "fm"


def png_queries(count: int) -> list[bytes]:
    """``count`` Fashion-MNIST test images as PNG uploads."""
    from PIL import Image

    from hashindex.embedding.sources import open_source

    test = open_source("fashion-mnist", split="test", limit=count)
    blobs = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(test.load(i)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    return blobs


def target_table(targets: list[dict]) -> list[str]:
    """Markdown rows of a benchmark's targets: name, measured value, met or missed."""
    rows = ["| target | measured | met |", "|---|---|---|"]
    return rows + [f"| {t['name']} | {t['value']} | {'met' if t['met'] else 'missed'} |" for t in targets]


def record(script: str, argv, measure, targets, render, out: Path) -> None:
    """Run ``measure(work_dir, log)`` in a temporary folder, beside the command, date, machine and
    load; add ``targets(doc)``; write the JSON to ``out`` and print ``render(doc)``."""
    from hashindex.measure.bench import machine_info
    from hashindex.measure.report import describe_machine

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        doc = {
            "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d"),
            "machine": "no GPU, shared with other jobs: " + describe_machine(machine_info()),
            "load_average_start": round(os.getloadavg()[0], 1),
        }
        doc.update(measure(Path(tmp), log))
    doc["load_average_end"] = round(os.getloadavg()[0], 1)
    doc["targets"] = targets(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(render(doc)))
