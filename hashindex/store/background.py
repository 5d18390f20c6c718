"""Writes on their own thread: the embed pipeline hands each batch's append to a
:class:`WriterThread`, so a commit's fsync overlaps the next batch's forward pass.

Crash safety is the writer's (:mod:`hashindex.store.writer`): what the thread has not yet appended
is lost on a kill, exactly like what the writer had buffered but not committed, and a re-run
resumes after the last durable shard.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

_STOP = object()


class WriterThread:
    """Runs submitted calls in order on one thread behind a queue of ``depth`` calls.

    :meth:`submit` blocks while ``depth`` calls wait, so at most ``depth`` batches are held in
    memory besides the one being written. An exception raised by a call stops every later call
    and is raised again in the submitting thread, by its next :meth:`submit` or by :meth:`close`.
    Used as a context manager, leaving the block waits for the queued calls (also when leaving on
    an exception: batches computed before the error are written, as they were without a thread).

    Args:
        depth: queued calls before :meth:`submit` waits (>= 1).
        name: the thread's name.
    """

    def __init__(self, depth: int = 2, name: str = "hashindex-writer"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:  # after an error the rest is drained, not run
                fn, args, kwargs = item
                try:
                    fn(*args, **kwargs)
                except BaseException as e:
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)``; raises the error of an earlier call, if any."""
        self._raise()
        if self._closed:
            raise RuntimeError("the writer thread is closed")
        self._queue.put((fn, args, kwargs))

    def close(self) -> None:
        """Wait for the queued calls, stop the thread, and raise the error of a call, if any."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> WriterThread:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except BaseException as e:
            logger.error("a write failed as well: %s: %s", type(e).__name__, e)
