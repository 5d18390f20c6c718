"""What one request may cost the service: body size (an oversized body is drained to a bound
before the 413, so ordinary clients read the status instead of a reset connection), files and
pixels per request (checked from the image headers, before any pixel is decoded), and a bounded
number of image requests decoding and embedding at once (the rest get 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import io
import re
from contextlib import asynccontextmanager

from hashindex.core.config import ServeConfig
from hashindex.core.errors import InputError

# An absolute path in a message (POSIX): never shown to a client.
_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"/:]+/)*[^\s'\":,)]*")
ID = re.compile(r"^(0|[1-9][0-9]{0,18})$")  # canonical ASCII decimal, at most 19 digits


class ApiError(Exception):
    """An answer other than 200: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def scrub(message: str) -> str:
    """A message safe to send: no absolute server path, bounded length."""
    return _PATH.sub("<path>", str(message))[:400]


def parse_id(value) -> int:
    """An item id from a URL or JSON: an int, or a canonical ASCII decimal string (no sign, no
    leading zeros, no separators), at most the largest int64.

    Raises:
        ApiError: 400 for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        v = value
    elif isinstance(value, str) and ID.match(value):
        v = int(value)
    else:
        raise ApiError(400, f"an item id is a non-negative integer in plain decimal, got {str(value)[:40]!r}")
    if not 0 <= v < 2**63:
        raise ApiError(404, f"unknown id {v}")
    return v


async def read_body(request, config: ServeConfig) -> bytes:
    """The request body, refused with 413 beyond ``max_upload_bytes``: the rest is read and
    dropped up to ``drain_bytes`` first, so the client has sent its body when the answer comes."""
    limit = config.max_upload_bytes
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > config.drain_bytes:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise ApiError(413, f"the request body exceeds the limit of {limit} bytes", {"Connection": "close"})
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was read
    return body


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from an image's header (nothing decoded).

    Raises:
        InputError: not an image Pillow can identify.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"the upload is not a readable image ({type(e).__name__})") from None


def check_pixels(blobs: list[bytes], config: ServeConfig) -> None:
    """Refuse, before decoding, uploads larger than the per-image or per-request pixel budget.

    Raises:
        ApiError: 413 naming the limit.
    """
    total = 0
    for data in blobs:
        w, h = image_size(data)
        if w * h > config.max_image_pixels:
            raise ApiError(413, f"an image of {w}x{h} pixels exceeds the limit of {config.max_image_pixels} pixels")
        total += w * h
    if total > config.max_request_pixels:
        raise ApiError(
            413, f"the images of this request hold {total} pixels, more than the limit of {config.max_request_pixels}"
        )


class Gate:
    """At most ``slots`` image requests decode and embed at once and ``queue`` more wait; any
    further one is answered 503 at once (with Retry-After), so a burst of expensive uploads
    cannot hold the service's memory or threads."""

    def __init__(self, slots: int, queue: int):
        self.slots, self.limit = asyncio.Semaphore(max(1, slots)), max(1, slots) + max(0, queue)
        self.waiting = 0
        self.refused = 0

    @asynccontextmanager
    async def enter(self):
        if self.waiting >= self.limit:
            self.refused += 1
            raise ApiError(503, "too many image requests at once: retry shortly", {"Retry-After": "1"})
        self.waiting += 1
        try:
            async with self.slots:
                yield
        finally:
            self.waiting -= 1


async def within(seconds: float, work):
    """Await ``work``, answering 503 when it takes longer than ``seconds``."""
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise ApiError(503, f"the request took longer than {seconds:g}s", {"Retry-After": "1"}) from None
