"""The embed stage: image sources, the embedding run (in process or on Ray), and the import of
embeddings made elsewhere.
"""
