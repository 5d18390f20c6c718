"""Index folders: the manifest, building (faiss binary indexes, the lookup table), loading with
verification, and small accessors of faiss internals.
"""
