"""The package version, in one place (artifacts record it; the CLI prints it)."""

__version__ = "0.1.0"
