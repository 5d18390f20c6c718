"""Measurements: retrieval metrics, ``evaluate``, ``bench`` and its report."""
