"""Abuse benchmark of `hashindex serve`: honest clients search by image while one more client
sends abusive uploads as fast as it is answered; the honest clients' latency against the same
server without the attacker, side by side in one run, and the server's memory throughout.

    .venv/bin/python benchmarks/serve_attack.py --out benchmarks/results/serve_attack.json

Phases (each bounded in requests and seconds), one server process on 127.0.0.1 at its default
limits: honest clients alone, honest clients with the attacker, honest clients alone again. The
attacker cycles through uploads a hostile user can make cheaply: images just under the per-image
pixel limit (single-colour PNGs of a few hundred KB that decode to ~100 MB each) one or six per
request, a body over the upload limit, a PNG whose header claims 2.5 gigapixels, many files in
one request, bytes that are no image. The server's resident memory is sampled every 20 ms from
/proc and its peak read from VmHWM.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import Client, Server, closed_loop, image_index, png_queries, record, target_table

HERE = Path(__file__).resolve().parent


def flat_png(width: int, height: int) -> bytes:
    """A single-colour RGB PNG: tiny on the wire, ``width·height·3`` bytes once decoded."""
    row = b"\x00" + b"\x80" * (3 * width)  # filter byte + pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """A small PNG whose header claims 50,000 × 50,000 pixels."""
    small = flat_png(64, 64)
    return small[:16] + struct.pack(">II", 50_000, 50_000) + small[24:]


class Attacker:
    """One keep-alive client sending the abusive requests in turn until stopped."""

    def __init__(self, url: str, limit_pixels: int, max_files: int):
        side = int((limit_pixels * 0.95) ** 0.5)  # just under the per-image limit
        big = flat_png(side, side)
        small = png_queries(1)[0]
        self.side, self.big_bytes = side, len(big)
        self.kinds = {
            "one_image_under_the_pixel_limit": [("image", big)],
            "six_images_under_the_pixel_limit": [("image", big)] * 6,
            "header_claims_2.5_gigapixels": [("image", bomb_png())],
            f"{max_files + 4}_files": [("image", small)] * (max_files + 4),
            "not_an_image": [("image", os.urandom(200_000))],
        }
        self.oversize = os.urandom(20 << 20)
        self.url, self.stats, self.stop = url, {}, threading.Event()

    def run(self, max_requests: int) -> None:
        c = Client(self.url)
        names = [*self.kinds, "body_over_the_upload_limit"]
        try:
            for i in range(max_requests):
                if self.stop.is_set():
                    return
                kind = names[i % len(names)]
                s = time.perf_counter()
                try:
                    if kind == "body_over_the_upload_limit":
                        status = c.post_image("/search", self.oversize, {"k": 10})
                    else:
                        status = c.post_files("/search", self.kinds[kind], {"k": 10})
                except OSError:  # a reset: reconnect, count it
                    status = "reset"
                    c.close()
                    c = Client(self.url)
                st = self.stats.setdefault(kind, {"requests": 0, "status": {}, "seconds": []})
                st["requests"] += 1
                st["status"][str(status)] = st["status"].get(str(status), 0) + 1
                st["seconds"].append(time.perf_counter() - s)
        finally:
            c.close()

    def summary(self) -> dict:
        return {
            k: {
                "requests": v["requests"],
                "status": v["status"],
                "median_s": round(float(np.median(v["seconds"])), 3),
                "max_s": round(float(np.max(v["seconds"])), 3),
            }
            for k, v in self.stats.items()
        }


class Memory:
    """Samples a process's resident memory (VmRSS) until stopped; reads its peak (VmHWM)."""

    def __init__(self, pid: int):
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _field(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(name)

    def _run(self):
        while not self.stop.wait(0.02):
            self.samples.append(self._field("VmRSS"))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def peak(self) -> int:
        return self._field("VmHWM")


def run(work: Path, n_db: int, k: int, clients: int, seconds: float, log) -> dict:
    from hashindex.core.config import ServeConfig

    image_index(work, n_db)
    blobs = png_queries(200)
    cfg = ServeConfig()

    def honest(c, r):
        return c.post_image("/search", blobs[r.integers(200)], {"k": k})

    out = {"n": n_db, "bits": 64, "k": k, "image_size": 112, "honest_clients": clients, "phases": {}}
    with Server(work / "fm") as srv:
        mem = Memory(srv.proc.pid)
        closed_loop(srv.url, honest, clients, 200, seconds)  # warm: backbone, ONNX session, caches
        out["rss_after_warmup_bytes"] = mem._field("VmRSS")
        out["peak_rss_after_warmup_bytes"] = mem.peak()
        with mem:
            out["phases"]["alone"] = closed_loop(srv.url, honest, clients, 20_000, seconds)
            log(f"alone: {out['phases']['alone']}")
            attacker = Attacker(srv.url, cfg.max_image_pixels, cfg.max_files)
            t = threading.Thread(target=attacker.run, args=(100_000,))
            t.start()
            try:
                out["phases"]["attacked"] = closed_loop(srv.url, honest, clients, 20_000, seconds)
            finally:
                attacker.stop.set()
                t.join()
            log(f"attacked: {out['phases']['attacked']}")
            out["phases"]["alone_again"] = closed_loop(srv.url, honest, clients, 20_000, seconds)
            log(f"alone again: {out['phases']['alone_again']}")
        out["attacker"] = attacker.summary()
        out["attacker_image_side"] = attacker.side
        out["attacker_image_bytes"] = attacker.big_bytes
        out["peak_rss_bytes"] = mem.peak()
        out["max_sampled_rss_bytes"] = max(mem.samples)
    # The stated bound: the warm server plus, per decode slot, one image at the pixel limit as
    # decoded RGB and one working copy (conversion or resize) of it.
    out["rss_bound_bytes"] = out["peak_rss_after_warmup_bytes"] + cfg.decode_slots * cfg.max_image_pixels * 3 * 2
    return out


def targets(doc: dict) -> list[dict]:
    p = doc["phases"]
    base = max(p["alone"]["p99_ms"], p["alone_again"]["p99_ms"])
    ratio = p["attacked"]["p99_ms"] / base
    peak, bound = doc["peak_rss_bytes"], doc["rss_bound_bytes"]
    return [
        {
            "name": f"honest p99 with the attacker <= 3x without ({doc['honest_clients']} clients)",
            "value": round(ratio, 2),
            "threshold": 3.0,
            "met": ratio <= 3.0,
        },
        {
            "name": "server peak RSS under the stated bound (warm peak + decode slots x 2 decoded images at the pixel limit)",
            "value": f"{peak / 2**20:.0f} MiB of {bound / 2**20:.0f} MiB",
            "threshold": bound,
            "met": peak <= bound,
        },
    ]


def render_markdown(doc: dict) -> list[str]:
    """The BENCHMARKS.md section."""
    p = doc["phases"]
    lines = [
        "## Serving under attack: honest image searches beside abusive uploads",
        "",
        f"Command: `{doc['command']}`; {doc['date']}, {doc['machine']}. One server at its default limits "
        f"(`ServeConfig()`), {doc['n']:,}-item {doc['bits']}-bit index of Fashion-MNIST, EfficientNet-Lite0 at "
        f"{doc['image_size']} px on the CPU; {doc['honest_clients']} honest closed-loop clients search by PNG upload "
        f"(k = {doc['k']}); one attacker client sends the abusive requests below in turn, each as soon as the last "
        "is answered. Server and clients share the machine's 2 cores.",
        "",
        "| phase | honest requests | errors | q/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("alone", "attacked", "alone_again"):
        r = p[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {r['requests']} | {r['errors']} | {r['qps']} | {r['p50_ms']} | {r['p99_ms']} |"
        )
    lines += ["", "| abusive request | sent | answers | median s | max s |", "|---|---|---|---|---|"]
    for kind, v in doc["attacker"].items():
        answers = ", ".join(f"{s}: {c}" for s, c in sorted(v["status"].items()))
        lines.append(f"| {kind.replace('_', ' ')} | {v['requests']} | {answers} | {v['median_s']} | {v['max_s']} |")
    lines += [
        "",
        f"The images under the pixel limit are {doc['attacker_image_side']}² single-colour PNGs of "
        f"{doc['attacker_image_bytes'] / 1024:.0f} KB. Server RSS: {doc['rss_after_warmup_bytes'] / 2**20:.0f} MiB warm, "
        f"peak {doc['peak_rss_bytes'] / 2**20:.0f} MiB (VmHWM), highest 20 ms sample during the phases "
        f"{doc['max_sampled_rss_bytes'] / 2**20:.0f} MiB.",
        "",
    ]
    return lines + target_table(doc["targets"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_attack.json")
    ap.add_argument("--image-db", type=int, default=1000, help="Fashion-MNIST items of the index")
    ap.add_argument("--clients", type=int, default=8, help="honest clients")
    ap.add_argument("--seconds", type=float, default=30.0, help="time bound of each phase")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)
    record(
        "serve_attack.py",
        argv,
        lambda work, log: run(work, args.image_db, args.k, args.clients, args.seconds, log),
        targets,
        render_markdown,
        args.out,
    )


if __name__ == "__main__":
    main()
