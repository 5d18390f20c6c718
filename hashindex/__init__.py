"""hashindex: image retrieval with learned binary codes.

Stages (one module each): ``sources`` → ``embed`` (``backbone``, ``augment``, ``store``) →
``probe`` → ``index`` → ``search``/``query`` → ``evaluate`` (``metrics``).
"""

import os as _os

# OpenMP threads that wait for work by sleeping, not spinning (read when torch or faiss loads
# their OpenMP runtime, so this must run before they are imported; a user's setting wins). On a
# machine whose cores other processes share, spinning threads hold cores the straggler of each
# parallel region needs: a CroVCA step on 2 shared cores ran 4x slower spinning than sleeping,
# while on idle cores sleeping costs a wake-up per region (benchmarks/fit_speed.py).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hashindex.core.errors import HashIndexError, InputError, IntegrityError, MismatchError
from hashindex.core.version import __version__

__all__ = ["HashIndexError", "InputError", "IntegrityError", "MismatchError", "__version__"]
