"""Probes as artifacts: encode embeddings to logits/codes; save and load (safetensors + JSON).

Loading and linear probes need NumPy only; torch is imported when a CroVCA probe first encodes,
so opening an index (which holds a probe) stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashindex.core.codes import pack
from hashindex.core.durable import publish_folder
from hashindex.core.errors import InputError, IntegrityError
from hashindex.core.validate import check_embeddings
from hashindex.probe.baselines import l2_normalize

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
        tensors: the weights as NumPy arrays (``mean``/``W`` for linear probes, the HashCoder
            state dict for CroVCA).
    """

    method: str
    bits: int
    input_dim: int
    config: dict
    meta: dict = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    _module: object | None = field(default=None, repr=False)

    @property
    def backbone(self) -> dict | None:
        """The backbone spec of the embeddings it was fitted on."""
        return (self.meta.get("embeddings") or {}).get("backbone")

    def module(self):
        """The CroVCA HashCoder (a torch module, built on first use)."""
        if self._module is None:
            import torch

            from hashindex.probe.hashcoder import HashCoder

            m = HashCoder(self.input_dim, self.bits, self.config.get("hashcoder", "small"))
            m.load_state_dict({k: torch.from_numpy(np.array(v, order="C")) for k, v in self.tensors.items()})
            self._module = m.eval()
        return self._module

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate embeddings fed to the probe (:func:`~hashindex.core.validate.check_embeddings`);
        returns them as float32 C-contiguous."""
        return check_embeddings(x, self.input_dim)

    def logits(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """``(n, bits)`` float32 logits; the code is ``logits > 0``.

        Computed with NumPy (the HashCoder's inference is three matrix products), so a query
        never waits for torch to import; tests/test_probe.py holds it equal to the torch module.
        """
        x = self.check_input(x)
        if self.method != "crovca":
            return ((l2_normalize(x) - self.tensors["mean"]) @ self.tensors["W"]).astype(np.float32)
        out = [
            hashcoder_logits(self.tensors, self.config.get("hashcoder", "small"), x[s : s + batch_size])
            for s in range(0, len(x), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed ``uint8`` codes ``(n, bits // 8)``."""
        return pack(self.logits(x))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``probe.json`` and ``weights.safetensors`` as the new folder ``out_dir``,
        published atomically (both files or neither).

        Raises:
            InputError: ``out_dir`` exists and is not empty.
        """
        from safetensors.numpy import save_file

        doc = {
            "format": PROBE_FORMAT,
            "method": self.method,
            "bits": self.bits,
            "input_dim": self.input_dim,
            "config": self.config,
            "meta": self.meta,
        }

        def fill(tmp: Path) -> None:
            # np.array(order="C") rather than ascontiguousarray, which would make 0-d arrays 1-d
            save_file({k: np.array(v, order="C") for k, v in self.tensors.items()}, str(tmp / PROBE_WEIGHTS))
            (tmp / PROBE_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

        return publish_folder(fill, out_dir)


BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default, which the HashCoder uses


def hashcoder_logits(tensors: dict[str, np.ndarray], arch: str, x: np.ndarray) -> np.ndarray:
    """The eval-mode forward of :class:`~hashindex.probe.hashcoder.HashCoder` in NumPy:
    Linear layers with ReLU (``small``) or exact GELU (``large``) between them, then the final
    BatchNorm with its running statistics."""
    linears = sorted({int(k.split(".")[1]) for k, v in tensors.items() if k.endswith(".weight") and np.ndim(v) == 2})
    bn = next(k.rsplit(".", 1)[0] for k in tensors if k.endswith("running_mean"))
    h = np.asarray(x, np.float32)
    for j, i in enumerate(linears):
        h = h @ tensors[f"net.{i}.weight"].T + tensors[f"net.{i}.bias"]
        if j < len(linears) - 1:
            h = np.maximum(h, 0, out=h) if arch == "small" else _gelu(h)
    scale = tensors[f"{bn}.weight"] / np.sqrt(tensors[f"{bn}.running_var"] + np.float32(BN_EPS))
    return ((h - tensors[f"{bn}.running_mean"]) * scale + tensors[f"{bn}.bias"]).astype(np.float32, copy=False)


def _gelu(h: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # only the large HashCoder needs it

    return (h * 0.5 * (1.0 + erf(h / np.float32(np.sqrt(2.0))))).astype(np.float32, copy=False)


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
    from safetensors.numpy import load_file

    d = Path(probe_dir)
    if not (d / PROBE_JSON).is_file() or not (d / PROBE_WEIGHTS).is_file():
        raise InputError(f"{d} is not a probe folder (needs {PROBE_JSON} and {PROBE_WEIGHTS}; made by fit-probe)")
    try:
        doc = json.loads((d / PROBE_JSON).read_text())
        tensors = load_file(str(d / PROBE_WEIGHTS))
        probe = Probe(
            doc["method"], int(doc["bits"]), int(doc["input_dim"]), doc["config"], doc.get("meta", {}), tensors
        )
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as e:
        raise IntegrityError(f"probe {d} is unreadable or corrupt: {type(e).__name__}: {e}") from None
    except Exception as e:  # safetensors' own errors
        raise IntegrityError(f"probe {d} is unreadable or corrupt: {type(e).__name__}: {e}") from None
    if doc.get("format", 0) > PROBE_FORMAT:
        raise InputError(f"probe {d} has format {doc['format']}; this hashindex reads up to {PROBE_FORMAT}")
    try:
        want = (
            hashcoder_shapes(probe.input_dim, probe.bits, probe.config.get("hashcoder", "small"))
            if probe.method == "crovca"
            else {"mean": (probe.input_dim,), "W": (probe.input_dim, probe.bits)}
        )
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != want:
            bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise ValueError(f"tensors {', '.join(bad[:4])} differ from the recorded bits, input_dim and hashcoder")
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"probe {d}: weights do not match its config: {e}") from None
    return probe


def hashcoder_shapes(in_dim: int, bits: int, arch: str = "small") -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of a :class:`~hashindex.probe.hashcoder.HashCoder` (checked
    against the module itself by the tests), so a probe file is validated without torch."""
    if arch == "small":
        dims = [(in_dim, in_dim), (bits, in_dim)]
    elif arch == "large":
        h = max(2 * in_dim, 2048)
        dims = [(h, in_dim), (h, h), (bits, h)]
    else:
        raise ValueError(f"unknown hashcoder {arch!r}")
    out: dict[str, tuple[int, ...]] = {}
    for i, (o, n) in enumerate(dims):
        out[f"net.{2 * i}.weight"], out[f"net.{2 * i}.bias"] = (o, n), (o,)
    bn = f"net.{2 * len(dims) - 1}"  # Linear, activation, ..., Linear, BatchNorm
    for k in ("weight", "bias", "running_mean", "running_var"):
        out[f"{bn}.{k}"] = (bits,)
    out[f"{bn}.num_batches_tracked"] = ()
    return out


def state_to_arrays(module) -> dict[str, np.ndarray]:
    """A trained module's state dict as NumPy arrays (the probe's tensors)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
