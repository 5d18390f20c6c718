"""Hash probes: the CroVCA HashCoder and the linear baselines.

Names are imported on first use, so loading a probe (``artifact``) does not import the training
code and torch.
"""

from importlib import import_module

__all__ = ["FitConfig", "METHODS", "Probe", "fit_probe", "load_probe"]
_HOME = {"FitConfig": "..config", "METHODS": "..config", "Probe": ".artifact", "load_probe": ".artifact", "fit_probe": ".fit"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
