"""Optional parts: a missing one is named with the install command that brings it, not raised
as a bare ModuleNotFoundError."""

from __future__ import annotations

import importlib.util

from hashindex.core.errors import InputError

EXTRAS = {"serve": ("fastapi", "uvicorn", "multipart"), "ray": ("ray",), "gpu": ("faiss",)}


def require(extra: str, what: str) -> None:
    """Raises InputError unless the modules of ``extra`` are installed.

    Args:
        extra: the name of the optional dependency group in pyproject.toml.
        what: what needs it (said in the message).
    """
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"{what} needs {', '.join(missing)}: pip install 'hashindex[{extra}]'")
