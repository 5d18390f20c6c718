"""Where an item's file is: inside its root folder, or nowhere (names are data, not trusted paths)."""

from __future__ import annotations

import os
from pathlib import Path


def inside(root: str | None, name: str) -> Path | None:
    """``root/name`` when it is a regular file inside ``root`` once links are resolved, else None
    (absolute names, ``..`` that climbs out, links that point outside, anything not a file)."""
    if not root or not name or os.path.isabs(name) or "\x00" in name:
        return None
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, path]) != base or not os.path.isfile(path):
        return None
    return Path(path)
