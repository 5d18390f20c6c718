"""The embeddings file (HDF5): its schema, the crash-safe resumable writer, the reader with
verification, and the durable-write helpers and lock that every stage publishing files shares.

``schema`` (datasets, checksums) · ``durable`` (fsync, atomic publish, ``OutputLock``) ·
``resume`` (the ``OUT.partial/`` folder) · ``writer`` (``EmbeddingsWriter``) · ``background``
(``WriterThread``: appends on their own thread) · ``reader`` (``open_embeddings``). Importing this package does not import torch.
"""

from .background import WriterThread
from .durable import OutputLock, OutputLockedError, fsync_dir, lock_path, publish_file, publish_folder, write_durably
from .reader import Embeddings, check_same_embeddings, open_embeddings
from .resume import partial_path, remove_resume_folder
from .schema import SCHEMA_VERSION
from .writer import EmbeddingsWriter, clean_published

__all__ = [
    "SCHEMA_VERSION", "Embeddings", "EmbeddingsWriter", "check_same_embeddings", "OutputLock", "OutputLockedError", "clean_published",
    "fsync_dir", "lock_path", "open_embeddings", "partial_path", "publish_file", "publish_folder", "remove_resume_folder",
    "write_durably", "WriterThread",
]  # fmt: skip
