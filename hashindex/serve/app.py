"""The HTTP API over a live index.

Every request reads one immutable snapshot (``live.snapshot``, fetched once); writes and the
catch-up with commits made by other processes swap that reference, so a search sees the index
before or after a commit, never between. Searches run in a small pool of worker threads (faiss
releases the GIL), image embedding in one more (see :mod:`.batcher`), writes in another, under
the folder's lock. Bad input gets a 4xx
with ``{"error": message}``.
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
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from hashindex.core.config import ServeConfig
from hashindex.core.durable import OutputLockedError
from hashindex.core.errors import HashIndexError, InputError, MismatchError
from hashindex.live.live_index import open_live
from hashindex.search.gpu import search_device
from hashindex.serve.batcher import ImageBatcher
from hashindex.serve.images import decode_upload, item_image

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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
        raise ApiError(400, f"{what} must be an integer, got {value!r}"[:300]) from None
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
    raise ApiError(400, f"asymmetric must be true or false, got {value!r}"[:300])


def create_app(index_dir, config: ServeConfig, *, embed_fn=None) -> FastAPI:
    """Build the app: the index is loaded (and verified) now, the backbone at start-up.

    Args:
        index_dir: the index folder.
        config: service options.
        embed_fn: ``list[np.ndarray] -> (n, D)`` features (default: the index's backbone).
    """
    live = open_live(index_dir)
    device = search_device(config.device or "auto")  # of the Hamming scan: InputError now, not per request
    import faiss

    # One query per search call: OpenMP threads would only wait on each other (and, on a busy
    # machine, on a descheduled sibling: measured 100+ ms stalls); concurrent requests use the
    # other cores. The setting is per thread, so it is made in each search thread itself.
    workers = 1 if live.snapshot.index.kind == "ivf" else max(1, config.search_workers)
    search_pool = ThreadPoolExecutor(
        workers, thread_name_prefix="search", initializer=faiss.omp_set_num_threads, initargs=(config.search_threads,)
    )
    write_pool = ThreadPoolExecutor(1, thread_name_prefix="write")
    write_lock = threading.Lock()
    state = {"embed": embed_fn, "backbone_error": None, "started": time.time()}

    def load_backbone():
        if state["embed"] is not None:
            return
        from hashindex.backbone.model import backbone_from_spec
        from hashindex.embedding.run import embed_images

        try:
            bb = backbone_from_spec(live.manifest.backbone, weights=config.weights, device=config.device or "auto")
        except Exception as e:
            state["backbone_error"] = f"the index's backbone cannot be loaded, so image search is off: {e}"
            logger.warning(state["backbone_error"])
            return
        state["embed"] = lambda images: embed_images(bb, images)

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

    app = FastAPI(title="hashindex", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.live, app.state.batcher = live, batcher

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(HashIndexError)
    async def _lib_error(request, e: HashIndexError):
        return JSONResponse({"error": str(e)}, status_code=_status_of(e))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    async def body_of(request: Request) -> bytes:
        """The request body, refused with 413 beyond the upload limit (checked while reading)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_upload_bytes:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {config.max_upload_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_upload_bytes:
                raise ApiError(413, f"request body exceeds the limit of {config.max_upload_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # lets request.form() parse what was read
        return body

    async def form_of(request: Request):
        await body_of(request)
        try:
            return await request.form(max_files=64, max_fields=16)
        except Exception as e:
            raise ApiError(400, f"malformed multipart body: {e}"[:300]) from None

    async def images_of(files) -> list[np.ndarray]:
        if not files or not all(hasattr(f, "read") for f in files):
            raise ApiError(400, "send the image as a multipart file in the field 'image'")
        if state["embed"] is None:
            raise ApiError(409, state["backbone_error"] or "image search is not available")
        loop = asyncio.get_running_loop()
        out = []
        for f in files:
            data = await f.read()
            out.append(await loop.run_in_executor(None, decode_upload, data, f.filename or "upload"))
        return out

    def searched(snap, t0, d, ids, s):
        # A response object: FastAPI would otherwise walk the dict through its encoder again.
        return JSONResponse(
            {"results": snap.results(d, ids, s)[0], "took_ms": round((time.perf_counter() - t0) * 1000, 3)}
        )

    @app.post("/search")
    async def search(request: Request):
        t0 = time.perf_counter()
        snap = live.snapshot
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await form_of(request)
            params = {k: form.get(k) for k in ("k", "rerank", "asymmetric")}
            x = (await batcher.embed(await images_of(form.getlist("image"))))[:1]
        else:
            try:
                params = json.loads(await body_of(request))
            except (ValueError, RecursionError):
                raise ApiError(
                    400, 'the body must be JSON ({"embedding": [...]} or {"id": 5}) or a multipart image upload'
                ) from None
            if not isinstance(params, dict) or ("embedding" in params) == ("id" in params):
                raise ApiError(400, 'give exactly one of "embedding" (a list of numbers) or "id" (an item id)')
            x = None
        k = _int(params.get("k"), "k", 1, config.max_k, 10)
        rerank = _int(params.get("rerank"), "rerank", 1, 100)
        asym = _bool(params.get("asymmetric"))
        if x is None and "id" in params:
            item_id = _int(params["id"], "id", 0)
            if item_id > np.iinfo(np.int64).max:
                raise ApiError(404, f"unknown id {item_id}")
            try:
                snap.positions([item_id])
            except InputError as e:
                raise ApiError(404, str(e)) from None
            run = lambda: snap.search_id(item_id, k, rerank, asym, device)  # noqa: E731
            return searched(snap, t0, *(await asyncio.get_running_loop().run_in_executor(search_pool, run)))
        elif x is None:
            emb = params["embedding"]
            if (
                not isinstance(emb, list)
                or not emb
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in emb)
            ):
                raise ApiError(400, '"embedding" must be a non-empty list of numbers')
            x = np.asarray(emb, np.float64)[None]
        d, ids, s = await asyncio.get_running_loop().run_in_executor(
            search_pool, snap.search, x, k, rerank, asym, device
        )
        return searched(snap, t0, d, ids, s)

    def parse_id(item_id: str) -> int:
        try:
            v = int(item_id)
        except ValueError:
            raise ApiError(400, f"an item id is an integer, got {item_id!r}"[:300]) from None
        if not 0 <= v <= np.iinfo(np.int64).max:
            raise ApiError(404, f"unknown id {v}")
        return v

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
        loop = asyncio.get_running_loop()
        try:
            kind, value = await loop.run_in_executor(None, item_image, live, live.snapshot, parse_id(item_id), size)
        except InputError as e:
            raise ApiError(404, str(e)) from None
        if kind == "file":
            return FileResponse(value)
        return Response(value, media_type=kind)

    @app.get("/health")
    async def health():
        snap = live.snapshot
        return {"status": "ok", "generation": snap.generation, "ntotal": snap.ntotal}

    @app.get("/stats")
    async def stats():
        info = live.info()
        info.update(
            image_search=state["embed"] is not None,
            writes=config.allow_writes,
            batches=batcher.batches,
            batched_images=batcher.images,
            uptime_s=round(time.time() - state["started"], 1),
        )
        return info

    def authorize(request: Request) -> None:
        if not config.allow_writes:
            raise ApiError(403, "writes are off: start the server with --allow-writes --token T")
        got = request.headers.get("authorization", "")
        if not got.startswith("Bearer ") or not hmac.compare_digest(got[7:].encode(), (config.token or "").encode()):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer T)")

    def write(fn, *args, **kw):
        with write_lock:
            return fn(*args, **kw)

    @app.post("/items", status_code=201)
    async def add_items(request: Request):
        authorize(request)
        form = await form_of(request)
        files = form.getlist("image")
        images = await images_of(files)
        x = await batcher.embed(images)
        blobs, names = [], []
        for f in files:
            await f.seek(0)
            suffix = Path(f.filename or "").suffix.lower()
            blobs.append(
                (await f.read(), suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ".img")
            )
            names.append(f.filename or "upload")
        ids = await asyncio.get_running_loop().run_in_executor(
            write_pool, lambda: write(live.add, x, names, uploads=blobs)
        )
        return {"ids": [int(i) for i in ids], "generation": live.snapshot.generation}

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

    page = (STATIC / "index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index_page():
        return page

    return app


def run(index_dir, config: ServeConfig = ServeConfig()) -> None:
    """Serve until interrupted (one process: the index and backbone are loaded once)."""
    import uvicorn

    uvicorn.run(
        create_app(index_dir, config), host=config.host, port=config.port, workers=1, log_level="info", access_log=False
    )
