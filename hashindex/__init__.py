"""hashindex: image retrieval with learned binary codes.

The public API (imported on first use, so ``import hashindex`` loads neither torch nor faiss)::

    import hashindex
    ix = hashindex.open_index("index/")            # or hashindex.build_index(...), Index.from_embeddings(...)
    res = ix.search(["photo.jpg", pil_image, uint8_array, embeddings, 42], k=10, where={"label": "Trouser"})
    ix.add("new_photos/"); ix.remove([42]); ix.compact()

Stages, each a subpackage (imports only go down this list): ``core`` → ``store`` → ``backbone`` →
``embedding`` → ``probe`` → ``index`` → ``search`` → ``live`` → ``dedup`` → ``api`` → ``serve`` /
``measure`` → ``cli``.
"""

import os as _os
from importlib import import_module as _import_module

# OpenMP threads that wait for work by sleeping, not spinning (read when torch or faiss loads
# their OpenMP runtime, so this must run before they are imported; a user's setting wins). On a
# machine whose cores other processes share, spinning threads hold cores the straggler of each
# parallel region needs (benchmarks/fit_speed.py).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hashindex.core.errors import HashIndexError, InputError, IntegrityError, MismatchError
from hashindex.core.version import __version__

_HOME = {
    "open_index": "hashindex.api.index",
    "Index": "hashindex.api.index",
    "SearchResults": "hashindex.api.results",
    "Hits": "hashindex.api.results",
    "embed": "hashindex.api.pipeline",
    "fit_probe": "hashindex.api.pipeline",
    "build_index": "hashindex.api.index",
    "index_images": "hashindex.api.index",
    "finetune": "hashindex.api.pipeline",
    "open_embeddings": "hashindex.store.reader",
    "import_embeddings": "hashindex.embedding.importer",
    "ImportConfig": "hashindex.embedding.importer",
    "ray_runner": "hashindex.embedding.ray_runner",
    "FinetuneConfig": "hashindex.probe.finetune",
    "LoRAConfig": "hashindex.backbone.lora",
    "evaluate": "hashindex.measure.evaluate",
    "run_bench": "hashindex.measure.bench",
    "serve_index": "hashindex.serve.app",
    "write_duplicates": "hashindex.dedup.output",
    "EmbedConfig": "hashindex.core.config",
    "FitConfig": "hashindex.core.config",
    "IndexConfig": "hashindex.core.config",
    "ServeConfig": "hashindex.core.config",
    "BenchConfig": "hashindex.core.config",
    "DedupConfig": "hashindex.core.config",
}

__all__ = [
    "__version__",
    "BenchConfig",
    "build_index",
    "DedupConfig",
    "embed",
    "EmbedConfig",
    "evaluate",
    "finetune",
    "FinetuneConfig",
    "fit_probe",
    "FitConfig",
    "HashIndexError",
    "Hits",
    "import_embeddings",
    "ImportConfig",
    "index_images",
    "Index",
    "IndexConfig",
    "InputError",
    "IntegrityError",
    "LoRAConfig",
    "MismatchError",
    "open_embeddings",
    "open_index",
    "ray_runner",
    "run_bench",
    "SearchResults",
    "serve_index",
    "write_duplicates",
    "ServeConfig",
]


def __getattr__(name: str):
    if name in _HOME:
        return getattr(_import_module(_HOME[name]), name)
    raise AttributeError(f"module 'hashindex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
