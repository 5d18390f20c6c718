"""``hashindex serve``: the HTTP API and web page over a live index (FastAPI on uvicorn)."""

from __future__ import annotations

import os

from ..config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run"]


def create_app(index_dir: str | os.PathLike, config: ServeConfig = ServeConfig(), *, embed_fn=None):
    """The ASGI app (see :mod:`hashindex.serve.app`)."""
    from .app import create_app as _create

    return _create(index_dir, config, embed_fn=embed_fn)


def run(index_dir: str | os.PathLike, config: ServeConfig = ServeConfig()) -> None:
    """Serve until interrupted (one process: the index and backbone are loaded once)."""
    import uvicorn

    uvicorn.run(create_app(index_dir, config), host=config.host, port=config.port, workers=1, log_level="info", access_log=False)
