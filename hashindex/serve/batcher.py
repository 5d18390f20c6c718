"""Micro-batching of image queries: concurrent requests wait a few milliseconds in an asyncio
queue and go through the backbone together, in a worker thread (the event loop stays free)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


class ImageBatcher:
    """Collects decoded images and embeds them in batches of at most ``max_batch``.

    Args:
        embed_fn: ``list[np.ndarray] -> (n, D) float32``, the backbone's features.
        max_batch: largest batch (1 = one image at a time).
        wait_s: how long the first image of a batch waits for more.
    """

    def __init__(self, embed_fn, max_batch: int = 32, wait_s: float = 0.005):
        self.embed_fn, self.max_batch, self.wait_s = embed_fn, max(1, max_batch), wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backbone")
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False)

    async def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Features of these images, ``(len(images), D)``, computed with other waiting queries."""
        loop = asyncio.get_running_loop()
        futures = []
        for im in images:
            fut = loop.create_future()
            await self._queue.put((im, fut))
            futures.append(fut)
        return np.concatenate(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [(im, fut) for im, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            try:
                x = await loop.run_in_executor(self._pool, self.embed_fn, [im for im, _ in batch])
            except Exception:
                logger.exception("backbone failed on a batch of %d images", len(batch))
                x = None
            if x is None:
                for im, fut in batch:
                    try:
                        one = await loop.run_in_executor(self._pool, self.embed_fn, [im])
                    except Exception as e:
                        if not fut.done():
                            fut.set_exception(e)
                    else:
                        if not fut.done():
                            fut.set_result(one)
                continue
            self.batches += 1
            self.images += len(batch)
            for j, (_, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(x[j : j + 1])
