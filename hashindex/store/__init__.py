"""The embeddings file (HDF5): its schema, the crash-safe resumable writer, and the reader with
verification. Importing it does not import torch.

``schema`` (datasets, checksums) · ``resume`` (the ``OUT.partial/`` folder) · ``writer``
(``EmbeddingsWriter``) · ``background`` (``WriterThread``: appends on their own thread) ·
``reader`` (``open_embeddings``).
"""
