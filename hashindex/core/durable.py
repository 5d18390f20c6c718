"""Durable file operations and the one-writer lock, shared by every stage that publishes files.

A file or folder under its final name is complete: it is written under a temporary name,
flushed, fsynced, renamed over the final name (atomic on POSIX), and the parent folder is fsynced
so the rename itself survives a crash.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from hashindex.core.errors import InputError

try:  # POSIX only; elsewhere the output is not protected against a second writer
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)


class OutputLockedError(InputError):
    """Another process is writing the same output file."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output file: ``OUT.lock``."""
    return Path(str(path) + ".lock")


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so the entries created or renamed in it are durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def publish_file(fill, path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Path:
    """Create the file ``path`` atomically: ``fill(tmp)`` writes it under a temporary name (by
    default a hidden sibling), which is fsynced and renamed over ``path``; then the folder is
    fsynced. The one publish-by-rename for files (folders: :func:`publish_folder`).
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.parent / f".tmp-{os.getpid()}-{path.name}"
    try:
        fill(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_durably(path: str | os.PathLike, write) -> None:
    """Write a file through ``write(fh)`` under a temporary name, flush, fsync, rename over
    ``path``, fsync the folder (:func:`publish_file`)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    publish_file(fill, path)


def check_new_folder(out: str | os.PathLike) -> Path:
    """Raises InputError unless ``out`` is free for a new folder (absent, or an empty folder)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not empty: choose another folder or remove it")
    return out


def publish_folder(fill, out: str | os.PathLike) -> Path:
    """Create the folder ``out`` atomically: ``fill(tmp)`` writes its files into a temporary
    sibling folder, every file is fsynced, the folder is renamed to ``out`` and the parent fsynced.

    ``out`` may exist as an empty folder (it is replaced); anything else there is refused.

    Raises:
        InputError: ``out`` exists and is not an empty folder.
    """
    out = check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; follow the umask like other outputs
        fill(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(root)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out


def _umask() -> int:
    """The process umask, read without changing it where the OS tells (os.umask alone would
    briefly set it, racing other threads' file creation)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


_HELD: set[str] = set()  # lock files held by this process (POSIX locks do not exclude their owner)


class OutputLock:
    """An exclusive POSIX lock (``fcntl.lockf``) on ``OUT.lock``, taken without waiting.

    POSIX record locks belong to a process: the kernel drops them when it dies (even by SIGKILL)
    and they are not inherited by forked children such as data-loader workers, so a killed run
    never blocks the next one. The lock file holds the owner's pid for the error message; the
    owner removes it when the output is published, and a leftover one is simply taken again.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = lock_path(out)
        self.fd: int | None = None
        self._key = os.path.join(os.path.realpath(self.path.parent), self.path.name)

    def _busy(self, holder: str) -> OutputLockedError:
        who = f"process {holder}" if holder.isdigit() else "another process"
        return OutputLockedError(
            f"{who} is already writing {self.out} (lock {self.path} is held): "
            "wait for it to finish or stop it, then re-run to resume"
        )

    def acquire(self) -> OutputLock:
        """Take the lock.

        Raises:
            OutputLockedError: another process (or another writer in this one) holds it.
        """
        if fcntl is None:  # pragma: no cover
            logger.warning("no fcntl on this platform: %s is not protected against a second writer", self.out)
            return self
        if self._key in _HELD:
            raise self._busy(str(os.getpid()))
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise InputError(f"cannot create the lock file {self.path}: {e.strerror}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                finally:
                    os.close(fd)
                raise self._busy(holder) from None
            # A finishing owner unlinks the lock file: make sure we locked the file that is there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD.add(self._key)
        return self

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; ``remove`` also deletes the lock file (done once the output is published)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        _HELD.discard(self._key)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
