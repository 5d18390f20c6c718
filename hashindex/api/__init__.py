"""The public Python API (exported from :mod:`hashindex`)."""
