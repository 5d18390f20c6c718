"""Probes as artifacts: encode embeddings to logits/codes; save and load (safetensors + JSON)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..codes import pack
from ..errors import InputError, IntegrityError, MismatchError
from .baselines import l2_normalize
from .hashcoder import HashCoder

PROBE_JSON = "probe.json"
PROBE_WEIGHTS = "weights.safetensors"
PROBE_FORMAT = 1


@dataclass
class Probe:
    """A fitted encoder from embeddings to B-bit codes.

    Attributes:
        method: ``crovca`` or a baseline name.
        bits: code length.
        input_dim: embedding width it was fitted on.
        config: the fit options (hyper-parameters, seed...).
        meta: loss history, bit balance, timings, the embeddings' provenance.
        tensors: the weights (``mean``/``W`` for linear probes, the HashCoder state dict for CroVCA).
    """

    method: str
    bits: int
    input_dim: int
    config: dict
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    _module: HashCoder | None = field(default=None, repr=False)

    @property
    def backbone(self) -> dict | None:
        """The backbone spec of the embeddings it was fitted on."""
        return (self.meta.get("embeddings") or {}).get("backbone")

    def module(self) -> HashCoder:
        if self._module is None:
            m = HashCoder(self.input_dim, self.bits, self.config.get("hashcoder", "small"))
            m.load_state_dict(self.tensors)
            self._module = m.eval()
        return self._module

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate embeddings fed to the probe; returns them as float32 C-contiguous.

        Raises:
            InputError: not 2-D, non-finite values.
            MismatchError: width differs from the probe's input dimension.
        """
        x = np.asarray(x)
        if x.ndim != 2:
            raise InputError(f"embeddings must be 2-D (n, dim), got shape {x.shape}")
        if x.shape[1] != self.input_dim:
            raise MismatchError(
                f"the probe expects {self.input_dim}-d embeddings, these are {x.shape[1]}-d "
                "(fit the probe on embeddings from the same backbone)"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InputError("embeddings contain NaN or inf values")
        return x

    @torch.inference_mode()
    def logits(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """``(n, bits)`` float32 logits; the code is ``logits > 0``."""
        x = self.check_input(x)
        if self.method != "crovca":
            mean, w = self.tensors["mean"].numpy(), self.tensors["W"].numpy()
            return ((l2_normalize(x) - mean) @ w).astype(np.float32)
        m = self.module()
        out = [m(torch.from_numpy(x[s : s + batch_size])).numpy() for s in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed ``uint8`` codes ``(n, bits // 8)``."""
        return pack(self.logits(x))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``probe.json`` and ``weights.safetensors`` into ``out_dir`` (created)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(out / PROBE_WEIGHTS))
        doc = {
            "format": PROBE_FORMAT,
            "method": self.method,
            "bits": self.bits,
            "input_dim": self.input_dim,
            "config": self.config,
            "meta": self.meta,
        }
        (out / PROBE_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return out


def probe_hash(probe_dir: str | os.PathLike) -> str:
    """sha256 over the probe's two files (JSON then weights)."""
    h = hashlib.sha256()
    for name in (PROBE_JSON, PROBE_WEIGHTS):
        h.update((Path(probe_dir) / name).read_bytes())
    return h.hexdigest()


def load_probe(probe_dir: str | os.PathLike) -> Probe:
    """Load a probe directory written by :meth:`Probe.save`.

    Raises:
        InputError: missing files.
        IntegrityError: unreadable JSON/weights or tensors that do not fit the recorded shapes.
    """
    from safetensors.torch import load_file

    d = Path(probe_dir)
    if not (d / PROBE_JSON).is_file() or not (d / PROBE_WEIGHTS).is_file():
        raise InputError(f"{d} is not a probe folder (needs {PROBE_JSON} and {PROBE_WEIGHTS}; made by fit-probe)")
    try:
        doc = json.loads((d / PROBE_JSON).read_text())
        tensors = load_file(str(d / PROBE_WEIGHTS))
        probe = Probe(doc["method"], int(doc["bits"]), int(doc["input_dim"]), doc["config"], doc.get("meta", {}), tensors)
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as e:
        raise IntegrityError(f"probe {d} is unreadable or corrupt: {type(e).__name__}: {e}") from None
    except Exception as e:  # safetensors' own errors
        raise IntegrityError(f"probe {d} is unreadable or corrupt: {type(e).__name__}: {e}") from None
    if doc.get("format", 0) > PROBE_FORMAT:
        raise InputError(f"probe {d} has format {doc['format']}; this hashindex reads up to {PROBE_FORMAT}")
    try:
        if probe.method == "crovca":
            probe.module()
        elif tensors["W"].shape != (probe.input_dim, probe.bits) or tensors["mean"].shape != (probe.input_dim,):
            raise ValueError("W/mean shapes differ from the recorded bits and input_dim")
    except (RuntimeError, ValueError, KeyError) as e:
        raise IntegrityError(f"probe {d}: weights do not match its config: {e}") from None
    return probe


def state_to_tensors(module: HashCoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
