"""``hashindex serve``: the HTTP API and web page over a live index (FastAPI on uvicorn)."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ServeConfig", "create_app", "run"]


@dataclass(frozen=True)
class ServeConfig:
    """Options of the service.

    ``batch_wait_ms``: how long the first image query of a batch waits for others before the
    backbone runs (``max_batch`` 1 turns micro-batching off). ``poll_seconds``: how often the
    manifest's generation is checked for commits made by other processes.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_writes: bool = False
    token: str | None = None
    weights: str | None = None
    device: str | None = None
    max_upload_bytes: int = 16 << 20
    max_k: int = 1000
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    poll_seconds: float = 0.5
    search_threads: int = 1  # faiss OpenMP threads per search: concurrency comes from the requests
    search_workers: int = 2  # searches running at once (IVF indexes use 1: a search may retune nprobe)


def create_app(index_dir: str | os.PathLike, config: ServeConfig = ServeConfig(), *, embed_fn=None):
    """The ASGI app (see :mod:`hashindex.serve.app`)."""
    from .app import create_app as _create

    return _create(index_dir, config, embed_fn=embed_fn)


def run(index_dir: str | os.PathLike, config: ServeConfig = ServeConfig()) -> None:
    """Serve until interrupted (one process: the index and backbone are loaded once)."""
    import uvicorn

    uvicorn.run(create_app(index_dir, config), host=config.host, port=config.port, workers=1, log_level="info", access_log=False)
