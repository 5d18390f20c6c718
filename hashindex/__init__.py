"""hashindex: image retrieval with learned binary codes.

Stages (one module each): ``sources`` → ``embed`` (``backbone``, ``augment``, ``store``) →
``probe`` → ``index`` → ``search``/``query`` → ``evaluate`` (``metrics``).
"""

__version__ = "0.1.0"

from .errors import HashIndexError, InputError, IntegrityError, MismatchError  # noqa: E402

__all__ = ["HashIndexError", "InputError", "IntegrityError", "MismatchError", "__version__"]
