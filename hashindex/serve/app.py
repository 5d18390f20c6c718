"""The HTTP API and web page over an index (FastAPI on uvicorn).

Every request reads one immutable snapshot (fetched once); writes and the catch-up with commits
made by other processes swap it, so a search sees the index before or after a commit, never
between. Searches run in a small pool of threads (faiss and the kernels release the GIL), image
decoding behind a :class:`~hashindex.serve.limits.Gate`, embedding in the micro-batcher's thread,
writes in one more, under the folder's lock (:class:`~hashindex.serve.service.Service`). Bad input
gets a 4xx with ``{"error": message}``; no answer names a path of the server's. Every response
carries ``nosniff`` and a restrictive content-security policy; the page's script and style are
files of their own.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from hashindex.core.config import ServeConfig
from hashindex.core.durable import OutputLockedError
from hashindex.core.errors import HashIndexError, InputError, MismatchError
from hashindex.serve.duplicates import add_duplicate_routes
from hashindex.serve.images import item_image, stored_upload
from hashindex.serve.limits import ApiError, parse_id, scrub, within
from hashindex.serve.service import Service, bool_param, filter_param, int_param

STATIC = Path(__file__).parent / "static"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Served bytes are an image of the collection: a sandbox keeps even a crafted file inert.
IMAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "private, max-age=60"}


def _status_of(e: HashIndexError) -> int:
    if isinstance(e, OutputLockedError):
        return 409
    if isinstance(e, MismatchError):
        return 422
    return 400 if isinstance(e, InputError) else 500


def _error(status: int, message: str, extra: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": scrub(message)}, status_code=status, headers={**SECURITY_HEADERS, **(extra or {})})


def create_app(index, config: ServeConfig = ServeConfig(), *, embed_fn=None) -> FastAPI:
    """The app over an index (a folder, or an open :class:`~hashindex.api.index.Index`): the index
    is loaded (and verified) now, the backbone at start-up.

    Args:
        index: the index folder or object.
        config: service options and limits.
        embed_fn: ``list[np.ndarray] -> (n, D)`` features (default: the index's backbone).
    """
    from hashindex.api.index import Index, open_index

    if not isinstance(index, Index):
        index = open_index(
            index,
            verify=config.verify,
            images_root=config.images_root,
            weights=config.weights,
            device=config.device or "auto",
        )
    svc = Service(index, config, embed_fn)
    live = svc.live

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, svc.start)
        svc.batcher.start()
        poller = asyncio.get_running_loop().create_task(svc.poll())
        yield
        poller.cancel()
        await svc.batcher.stop()

    app = FastAPI(title="hashindex", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.index, app.state.live, app.state.batcher, app.state.gate, app.state.service = (
        index,
        live,
        svc.batcher,
        svc.gate,
        svc,
    )

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():  # a route's own (stricter) policy stays
            response.headers.setdefault(key, value)
        return response

    app.add_exception_handler(ApiError, lambda request, e: _error(e.status, e.message, e.headers))
    app.add_exception_handler(HashIndexError, lambda request, e: _error(_status_of(e), str(e)))
    app.add_exception_handler(StarletteHTTPException, lambda request, e: _error(e.status_code, str(e.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        return _error(422, f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', 'invalid request')}")

    async def search_request(request: Request):
        t0 = time.perf_counter()
        snap = live.snapshot
        x, item_id, params, _ = await svc.query_of(request, ("k", "rerank", "asymmetric", "filter"))
        k = int_param(params.get("k"), "k", 1, config.max_k, 10)
        rerank, asym = int_param(params.get("rerank"), "rerank", 1, 100), bool_param(params.get("asymmetric"))
        where = filter_param(params.get("filter"))
        ids = where.pop("id", None) if where else None
        allowed = snap.allowed(where or None, None if ids is None else (ids if isinstance(ids, list) else [ids]))
        if item_id is not None:
            res = await svc.run(
                svc.search_pool, lambda: snap.search_id(item_id, k, rerank, asym, svc.device, allowed=allowed)
            )
        else:
            res = await svc.run(svc.search_pool, lambda: snap.search(x, k, rerank, asym, svc.device, allowed=allowed))
        # A response object: FastAPI would otherwise walk the dict through its encoder again.
        hits = snap.hits(res.D, res.I, res.S)[0]
        return JSONResponse({"results": hits, "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    @app.post("/search")
    async def search(request: Request):
        return await within(config.request_timeout_s, search_request(request))

    @app.get("/items/{item_id}")
    async def get_item(item_id: str):
        try:
            return live.snapshot.item(parse_id(item_id))
        except InputError as e:
            raise ApiError(404, str(e)) from None

    @app.get("/items/{item_id}/image")
    async def get_image(item_id: str, size: int | None = None):
        if size is not None and not 16 <= size <= 1024:
            raise ApiError(400, "size must be between 16 and 1024")
        v = parse_id(item_id)
        try:
            media, data = await svc.run(svc.decode_pool, item_image, index, live.snapshot, v, size)
        except InputError as e:
            raise ApiError(404, str(e)) from None
        return Response(data, media_type=media, headers=IMAGE_HEADERS)

    @app.get("/health")
    async def health():
        snap = live.snapshot
        return {"status": "ok", "generation": snap.generation, "ntotal": snap.ntotal}

    @app.get("/stats")
    async def stats():
        info = {k: v for k, v in live.info().items() if k not in ("path", "images_root")}
        info.update(
            image_search=svc.embed is not None,
            writes=config.allow_writes,
            batches=svc.batcher.batches,
            batched_images=svc.batcher.images,
            refused=svc.gate.refused,
            uptime_s=round(time.time() - svc.started, 1),
        )
        return info

    async def add_request(request: Request):
        form = await svc.form_of(request)
        files = form.getlist("image")
        async with svc.gate.enter():
            images, formats, blobs = await svc.images_of(files, one=False)
            x = await svc.batcher.embed(images)
        uploads = [stored_upload(b, f) for b, f in zip(blobs, formats)]
        names = [str(getattr(f, "filename", "") or "upload")[:200] for f in files]
        ids = await svc.write(live.add, x, names, uploads=uploads)
        return {"ids": [int(i) for i in ids], "generation": live.snapshot.generation}

    @app.post("/items", status_code=201)
    async def add_items(request: Request):
        svc.authorize(request)
        return await within(config.request_timeout_s, add_request(request))

    @app.delete("/items/{item_id}")
    async def delete_item(request: Request, item_id: str):
        svc.authorize(request)
        v = parse_id(item_id)
        try:
            live.snapshot.positions([v])
        except InputError as e:
            raise ApiError(404, str(e)) from None
        await svc.write(live.remove, [v])
        return {"removed": v, "generation": live.snapshot.generation}

    add_duplicate_routes(app, svc)
    for route, (name, media) in PAGE_FILES.items():
        body = (STATIC / name).read_bytes()
        app.add_api_route(
            route,
            lambda body=body, media=media: Response(body, media_type=media),
            methods=["GET"],
            include_in_schema=False,
        )
    return app


def serve_index(index, config: ServeConfig = ServeConfig()) -> None:
    """Serve an index until interrupted (one process: the index and backbone are loaded once)."""
    import uvicorn

    app = create_app(index, config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        workers=1,
        log_level="info",
        access_log=False,
        timeout_keep_alive=5,
        limit_concurrency=config.max_connections,
    )
