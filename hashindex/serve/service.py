"""What the service's routes share: the open index, its worker pools and limits, the backbone's
state, and the parsing of a request into a query (an uploaded image, an embedding, an item id)
with its options."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hashindex.core.config import ServeConfig
from hashindex.core.errors import HashIndexError, InputError
from hashindex.serve.batcher import ImageBatcher
from hashindex.serve.images import check_images, decode_upload
from hashindex.serve.limits import ApiError, Gate, check_pixels, parse_id, read_body, scrub


def int_param(value, what: str, lo: int, hi: int | None = None, default=None) -> int | None:
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


def bool_param(value, what: str = "asymmetric") -> bool:
    if value in (None, "", False, "0", "false", "False", "no"):
        return False
    if value in (True, "1", "true", "True", "yes", "on"):
        return True
    raise ApiError(400, f"{what} must be true or false, got {str(value)[:40]!r}")


def float_param(value, what: str, lo: float, hi: float, default=None) -> float | None:
    if value is None or value == "":
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{what} must be a number, got {str(value)[:40]!r}") from None
    if not lo <= v <= hi:
        raise ApiError(400, f"{what} must be between {lo:g} and {hi:g}, got {v:g}")
    return v


def filter_param(value):
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


class Service:
    """The shared state of one server process.

    Attributes:
        ix: the open :class:`~hashindex.api.index.Index`; live: its live index.
        config: options and limits; device: where flat Hamming scans run.
        gate: admission of image requests; batcher: micro-batching of embeddings.
    """

    def __init__(self, ix, config: ServeConfig, embed_fn=None):
        import faiss

        from hashindex.search.gpu import search_device

        self.ix, self.live, self.config = ix, ix.live, config
        self.device = search_device(config.device or "auto")  # InputError now, not per request
        # One query per search call: OpenMP threads would only wait on each other; concurrency
        # comes from the requests. The setting is per thread, so each search thread makes it.
        threads = max(1, config.search_workers)
        self.search_pool = ThreadPoolExecutor(threads, "search", faiss.omp_set_num_threads, (config.search_threads,))
        self.decode_pool = ThreadPoolExecutor(max(1, config.decode_slots), "decode")
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.write_lock = threading.Lock()
        self.gate = Gate(config.decode_slots, config.decode_queue)
        self.embed, self.backbone_error, self.draft = embed_fn, None, None
        self.started = time.time()
        self.batcher = ImageBatcher(lambda images: self.embed(images), config.max_batch, config.batch_wait_ms / 1000)
        self.cache: dict = {}  # results worth keeping for a generation (near-duplicate groups)

    def start(self) -> None:
        """Load the backbone (image search stays off, with the reason, when it cannot be loaded)
        and check that a sample of items' images can be read."""
        log = logging.getLogger("hashindex.serve")
        if self.embed is None:
            try:
                self.draft = self.ix.embedder.draft_size
                self.ix.embed_images([np.zeros((8, 8, 3), np.uint8)])  # load it now, not on the first query
                self.embed = self.ix.embed_images
            except Exception as e:
                self.backbone_error = scrub(f"the index's backbone cannot be loaded, so image search is off: {e}")
                log.warning(self.backbone_error)
        ok, tried = check_images(self.ix, self.live.snapshot)
        if tried and ok < tried:
            log.warning(
                "%d of %d sampled items have no readable image (moved? start with --images-root DIR)", tried - ok, tried
            )

    def refresh(self) -> None:
        """Follow commits of other processes (skipped while this process writes)."""
        if self.write_lock.acquire(blocking=False):
            try:
                self.live.refresh()
            except HashIndexError as e:
                logging.getLogger("hashindex.serve").warning("cannot follow %s: %s", self.live.path, e)
            finally:
                self.write_lock.release()

    async def poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            await loop.run_in_executor(self.write_pool, self.refresh)

    async def run(self, pool, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def form_of(self, request):
        await read_body(request, self.config)
        try:
            return await request.form(max_files=self.config.max_files, max_fields=16)
        except Exception as e:
            raise ApiError(400, f"malformed multipart body: {e}") from None

    async def images_of(self, files, *, one: bool):
        """Decoded uploads (within the request's pixel budget), their formats and bytes."""
        if not files or not all(hasattr(f, "read") for f in files):
            raise ApiError(400, "send the image as a multipart file in the field 'image'")
        if one and len(files) > 1:
            raise ApiError(400, f"search takes one image, got {len(files)}")
        if self.embed is None:
            raise ApiError(409, self.backbone_error or "image search is not available")
        blobs = [await f.read() for f in files]
        check_pixels(blobs, self.config)
        decoded = [await self.run(self.decode_pool, decode_upload, b, self.draft) for b in blobs]
        return [d[0] for d in decoded], [d[1] for d in decoded], blobs

    async def query_of(self, request, params: tuple[str, ...]):
        """A one-query request: ``(x, item_id, params, image)`` with the float embedding of an
        uploaded image (and its pixels) or of ``"embedding"`` (image None), or the ``"id"`` of an
        indexed item (then x and image are None)."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await self.form_of(request)
            values = {k: form.get(k) for k in params}
            async with self.gate.enter():
                images, _, _ = await self.images_of(form.getlist("image"), one=True)
                return await self.batcher.embed(images), None, values, images[0]
        try:
            values = json.loads(await read_body(request, self.config))
        except (ValueError, RecursionError):
            raise ApiError(
                400, 'the body must be JSON ({"embedding": [...]} or {"id": 5}) or a multipart image upload'
            ) from None
        if not isinstance(values, dict) or ("embedding" in values) == ("id" in values):
            raise ApiError(400, 'give exactly one of "embedding" (a list of numbers) or "id" (an item id)')
        if "id" in values:
            item_id = parse_id(values["id"])
            try:
                self.live.snapshot.positions([item_id])
            except InputError as e:
                raise ApiError(404, str(e)) from None
            return None, item_id, values, None
        emb = values["embedding"]
        if (
            not isinstance(emb, list)
            or not emb
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in emb)
        ):
            raise ApiError(400, '"embedding" must be a non-empty list of numbers')
        return np.asarray(emb, np.float64)[None], None, values, None

    def authorize(self, request) -> None:
        if not self.config.allow_writes:
            raise ApiError(403, "writes are off: start the server with --allow-writes and a token")
        got = request.headers.get("authorization", "")
        if not got.startswith("Bearer ") or not hmac.compare_digest(
            got[7:].encode(), (self.config.token or "").encode()
        ):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer T)")

    async def write(self, fn, *args, **kw):
        """Run a write on the writer thread, under this process's write lock."""

        def locked():
            with self.write_lock:
                return fn(*args, **kw)

        return await self.run(self.write_pool, locked)
