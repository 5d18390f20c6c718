"""Exceptions raised by hashindex.

Every error a user can cause derives from :class:`HashIndexError` and carries a message that
says what to do. The CLI prints that message on one line and exits with ``exit_code``.
"""

from __future__ import annotations


class HashIndexError(Exception):
    """Base class of all hashindex errors.

    Attributes:
        setting: the name of the option at fault (``image_size``), when one is; front ends
            name it their own way (the CLI as ``--image-size``).
    """

    exit_code = 1

    def __init__(self, message: str = "", *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class InputError(HashIndexError, ValueError):
    """Bad user input: a missing file, a wrong option value, unusable data."""

    exit_code = 2


class MismatchError(InputError):
    """Two artifacts that must agree do not (e.g. probe and embeddings of other dimensions)."""


class IntegrityError(HashIndexError):
    """An artifact is corrupt or was modified after it was written."""

    exit_code = 3
