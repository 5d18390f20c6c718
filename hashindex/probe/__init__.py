"""Hash probes: the CroVCA HashCoder and the linear baselines."""

from .artifact import Probe, load_probe
from .fit import METHODS, FitConfig, fit_probe

__all__ = ["FitConfig", "METHODS", "Probe", "fit_probe", "load_probe"]
