"""Search over an index: Hamming ranking (CPU and GPU), re-ranking, and the exact float and
asymmetric references.
"""
