"""The HTTP API and web page over an index (FastAPI on uvicorn).

Every request reads one immutable snapshot (fetched once); writes and the catch-up with commits
made by other processes swap it, so a search sees the index before or after a commit, never
between. Searches run in a small pool of threads (faiss and the kernels release the GIL), image
decoding behind a :class:`~hashindex.serve.limits.Gate`, embedding in the micro-batcher's thread,
writes in one more, under the folder's lock. Bad input gets a 4xx with ``{"error": message}``;
no answer names a path of the server's. Every response carries ``nosniff`` and a restrictive
content-security policy; the page's script and style are files of their own.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from hashindex.core.config import ServeConfig
from hashindex.core.durable import OutputLockedError
from hashindex.core.errors import HashIndexError, InputError, MismatchError
from hashindex.serve.batcher import ImageBatcher
from hashindex.serve.images import check_images, decode_upload, item_image, stored_upload
from hashindex.serve.limits import ApiError, Gate, check_pixels, parse_id, read_body, scrub, within

logger = logging.getLogger(__name__)
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


def _status_of(e: HashIndexError) -> int:
    if isinstance(e, OutputLockedError):
        return 409
    if isinstance(e, MismatchError):
        return 422
    return 400 if isinstance(e, InputError) else 500


def _int(value, what: str, lo: int, hi: int | None = None, default=None) -> int | None:
    """An integer parameter from JSON or a form field (``"5"``, 5, 5.0), within [lo, hi]."""
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(value) if isinstance(value, str) else value
        if not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v:
            raise ValueError
        v = int(v)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, f"{what} must be an integer, got {str(value)[:40]!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise ApiError(
            400, f"{what} must be between {lo} and {hi}, got {v}" if hi else f"{what} must be >= {lo}, got {v}"
        )
    return v


def _bool(value) -> bool:
    if value in (None, "", False, "0", "false", "False", "no"):
        return False
    if value in (True, "1", "true", "True", "yes", "on"):
        return True
    raise ApiError(400, f"asymmetric must be true or false, got {str(value)[:40]!r}")


def _filter(value):
    """The ``filter`` of a request: a JSON object (or its text, in a form field)."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ApiError(400, 'filter must be a JSON object such as {"label": "Trouser"}') from None
    if not isinstance(value, dict):
        raise ApiError(400, 'filter must be a JSON object such as {"label": "Trouser"}')
    return value


def create_app(index, config: ServeConfig = ServeConfig(), *, embed_fn=None) -> FastAPI:
    """The app over an index (a folder, or an open :class:`~hashindex.api.index.Index`): the index
    is loaded (and verified) now, the backbone at start-up.

    Args:
        index: the index folder or object.
        config: service options and limits.
        embed_fn: ``list[np.ndarray] -> (n, D)`` features (default: the index's backbone).
    """
    import faiss

    from hashindex.api.index import Index, open_index
    from hashindex.search.gpu import search_device

    ix = (
        index
        if isinstance(index, Index)
        else open_index(
            index,
            verify=config.verify,
            images_root=config.images_root,
            weights=config.weights,
            device=config.device or "auto",
        )
    )
    live = ix.live
    device = search_device(config.device or "auto")  # of the Hamming scan: InputError now, not per request
    # One query per search call: OpenMP threads would only wait on each other; concurrency comes
    # from the requests. The setting is per thread, so it is made in each search thread itself.
    search_pool = ThreadPoolExecutor(
        max(1, config.search_workers), "search", faiss.omp_set_num_threads, (config.search_threads,)
    )
    decode_pool = ThreadPoolExecutor(max(1, config.decode_slots), "decode")
    write_pool = ThreadPoolExecutor(1, thread_name_prefix="write")
    write_lock = threading.Lock()
    gate = Gate(config.decode_slots, config.decode_queue)
    state = {"embed": embed_fn, "backbone_error": None, "started": time.time()}
    draft = None

    def load_backbone():
        nonlocal draft
        if state["embed"] is not None:
            return
        try:
            draft = ix.embedder.draft_size
            ix.embed_images([np.zeros((8, 8, 3), np.uint8)])  # load it now, not on the first query
        except Exception as e:  # noqa: BLE001 - the service still answers searches by embedding and id
            state["backbone_error"] = scrub(f"the index's backbone cannot be loaded, so image search is off: {e}")
            logger.warning(state["backbone_error"])
            return
        state["embed"] = ix.embed_images
        ok, tried = check_images(ix, live.snapshot)
        if tried and ok < tried:
            logger.warning(
                "%d of %d sampled items have no readable image (moved? start with --images-root DIR)", tried - ok, tried
            )

    def refresh():
        if write_lock.acquire(blocking=False):
            try:
                live.refresh()
            except HashIndexError as e:
                logger.warning("cannot follow %s: %s", live.path, e)
            finally:
                write_lock.release()

    async def poll():
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(config.poll_seconds)
            await loop.run_in_executor(write_pool, refresh)

    batcher = ImageBatcher(lambda images: state["embed"](images), config.max_batch, config.batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, load_backbone)
        batcher.start()
        poller = asyncio.get_running_loop().create_task(poll())
        yield
        poller.cancel()
        await batcher.stop()

    app = FastAPI(title="hashindex", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.index, app.state.live, app.state.batcher, app.state.gate = ix, live, batcher, gate

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():  # a route's own (stricter) policy stays
            response.headers.setdefault(key, value)
        return response

    def error(status: int, message: str, extra: dict | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": scrub(message)}, status_code=status, headers={**SECURITY_HEADERS, **(extra or {})}
        )

    app.add_exception_handler(ApiError, lambda request, e: error(e.status, e.message, e.headers))
    app.add_exception_handler(HashIndexError, lambda request, e: error(_status_of(e), str(e)))
    app.add_exception_handler(StarletteHTTPException, lambda request, e: error(e.status_code, str(e.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        return error(422, f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', 'invalid request')}")

    async def form_of(request: Request):
        await read_body(request, config)
        try:
            return await request.form(max_files=config.max_files, max_fields=16)
        except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
            raise ApiError(400, f"malformed multipart body: {e}") from None

    async def images_of(files, *, one: bool):
        """Decoded uploads (within the request's pixel budget) with their formats and bytes."""
        if not files or not all(hasattr(f, "read") for f in files):
            raise ApiError(400, "send the image as a multipart file in the field 'image'")
        if one and len(files) > 1:
            raise ApiError(400, f"search takes one image, got {len(files)}")
        if state["embed"] is None:
            raise ApiError(409, state["backbone_error"] or "image search is not available")
        blobs = [await f.read() for f in files]
        check_pixels(blobs, config)
        loop = asyncio.get_running_loop()
        decoded = [await loop.run_in_executor(decode_pool, decode_upload, b, draft) for b in blobs]
        return [d[0] for d in decoded], [d[1] for d in decoded], blobs

    def searched(snap, t0, res):
        # A response object: FastAPI would otherwise walk the dict through its encoder again.
        hits = snap.hits(res.D, res.I, res.S)[0]
        return JSONResponse({"results": hits, "took_ms": round((time.perf_counter() - t0) * 1000, 3)})

    async def run_search(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(search_pool, fn, *args)

    async def search_request(request: Request):
        t0 = time.perf_counter()
        snap = live.snapshot
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await form_of(request)
            params = {k: form.get(k) for k in ("k", "rerank", "asymmetric", "filter")}
            async with gate.enter():
                images, _, _ = await images_of(form.getlist("image"), one=True)
                x = await batcher.embed(images)
        else:
            try:
                params = json.loads(await read_body(request, config))
            except (ValueError, RecursionError):
                raise ApiError(
                    400, 'the body must be JSON ({"embedding": [...]} or {"id": 5}) or a multipart image upload'
                ) from None
            if not isinstance(params, dict) or ("embedding" in params) == ("id" in params):
                raise ApiError(400, 'give exactly one of "embedding" (a list of numbers) or "id" (an item id)')
            x = None
        k = _int(params.get("k"), "k", 1, config.max_k, 10)
        rerank, asym = _int(params.get("rerank"), "rerank", 1, 100), _bool(params.get("asymmetric"))
        where = _filter(params.get("filter"))
        ids = where.pop("id", None) if where else None
        allowed = snap.allowed(where or None, None if ids is None else (ids if isinstance(ids, list) else [ids]))
        if x is None and "id" in params:
            item_id = parse_id(params["id"])
            try:
                snap.positions([item_id])
            except InputError as e:
                raise ApiError(404, str(e)) from None
            res = await run_search(lambda: snap.search_id(item_id, k, rerank, asym, device, allowed=allowed))
            return searched(snap, t0, res)
        if x is None:
            emb = params["embedding"]
            if (
                not isinstance(emb, list)
                or not emb
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in emb)
            ):
                raise ApiError(400, '"embedding" must be a non-empty list of numbers')
            x = np.asarray(emb, np.float64)[None]
        res = await run_search(lambda: snap.search(x, k, rerank, asym, device, allowed=allowed))
        return searched(snap, t0, res)

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
            media, data = await asyncio.get_running_loop().run_in_executor(
                decode_pool, item_image, ix, live.snapshot, v, size
            )
        except InputError as e:
            raise ApiError(404, str(e)) from None
        # Served bytes are an image of the collection: a sandbox keeps even a crafted file inert.
        return Response(
            data,
            media_type=media,
            headers={"Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "private, max-age=60"},
        )

    @app.get("/health")
    async def health():
        snap = live.snapshot
        return {"status": "ok", "generation": snap.generation, "ntotal": snap.ntotal}

    @app.get("/stats")
    async def stats():
        info = live.info()
        info.pop("path", None)
        info.pop("images_root", None)
        info.update(
            image_search=state["embed"] is not None,
            writes=config.allow_writes,
            batches=batcher.batches,
            batched_images=batcher.images,
            refused=gate.refused,
            uptime_s=round(time.time() - state["started"], 1),
        )
        return info

    def authorize(request: Request) -> None:
        if not config.allow_writes:
            raise ApiError(403, "writes are off: start the server with --allow-writes and a token")
        got = request.headers.get("authorization", "")
        if not got.startswith("Bearer ") or not hmac.compare_digest(got[7:].encode(), (config.token or "").encode()):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer T)")

    def write(fn, *args, **kw):
        with write_lock:
            return fn(*args, **kw)

    async def add_request(request: Request):
        form = await form_of(request)
        files = form.getlist("image")
        async with gate.enter():
            images, formats, blobs = await images_of(files, one=False)
            x = await batcher.embed(images)
        uploads = [stored_upload(b, f) for b, f in zip(blobs, formats)]
        names = [str(getattr(f, "filename", "") or "upload")[:200] for f in files]
        ids = await asyncio.get_running_loop().run_in_executor(
            write_pool, lambda: write(live.add, x, names, uploads=uploads)
        )
        return {"ids": [int(i) for i in ids], "generation": live.snapshot.generation}

    @app.post("/items", status_code=201)
    async def add_items(request: Request):
        authorize(request)
        return await within(config.request_timeout_s, add_request(request))

    @app.delete("/items/{item_id}")
    async def delete_item(request: Request, item_id: str):
        authorize(request)
        v = parse_id(item_id)
        try:
            live.snapshot.positions([v])
        except InputError as e:
            raise ApiError(404, str(e)) from None
        await asyncio.get_running_loop().run_in_executor(write_pool, lambda: write(live.remove, [v]))
        return {"removed": v, "generation": live.snapshot.generation}

    pages = {route: ((STATIC / name).read_bytes(), media) for route, (name, media) in PAGE_FILES.items()}
    for route, (body, media) in pages.items():
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
