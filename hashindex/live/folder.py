"""How a compaction swaps folders, and how readers and writers find the complete one.

The new base is written whole into ``.NAME.compact-new`` beside the folder (every file fsynced),
then the folder is renamed to ``.NAME.compact-old``, the new one to ``NAME``, and the old one
deleted. A kill between the two renames leaves no ``NAME``: readers then read the complete new
folder, and the next writer (:func:`recover`) finishes the swap. Paths are resolved once
(symbolic links followed), so every path to one index names the same folder, lock and siblings.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from hashindex.core.durable import fsync_dir

CRASH_ENV = "HASHINDEX_CRASH_AT"  # tests: a step name at which the process kills itself (SIGKILL)


def resolve_folder(path: str | os.PathLike) -> Path:
    """The folder ``path`` names, with symbolic links followed (also while it is being swapped)."""
    p = Path(path)
    return Path(os.path.realpath(p.parent)) / p.name if not p.is_symlink() else Path(os.path.realpath(p))


def compact_paths(path: Path) -> tuple[Path, Path]:
    """The sibling folders a compaction uses: ``(new base being written, old base being retired)``."""
    return path.parent / f".{path.name}.compact-new", path.parent / f".{path.name}.compact-old"


def readable_path(path: Path) -> Path:
    """The folder to read: ``path``, or during the instant of a compaction's swap the complete one."""
    new, old = compact_paths(path)
    if path.exists():
        return path
    for p in (new, old):  # new is complete once old exists: it is renamed only after being fsynced
        if p.exists() and (old.exists() or p == old):
            return p
    return path


def recover(path: Path) -> None:
    """Finish or undo a compaction that was interrupted (call under the writer lock)."""
    new, old = compact_paths(path)
    if not path.exists():
        if new.exists() and old.exists():
            os.replace(new, path)  # the new base was complete: roll forward
        elif old.exists():
            os.replace(old, path)
        fsync_dir(path.parent)
    for leftover in (old, new):
        if leftover.exists() and path.exists():
            shutil.rmtree(leftover)


def crash_point(step: str) -> None:
    """Kill this process here when the fault-injection variable names ``step`` (crash tests)."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
