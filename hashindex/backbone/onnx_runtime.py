"""The backbone exported once to ONNX and run with ONNX Runtime.

On a CPU, ONNX Runtime runs the EfficientNet family about twice as fast as torch's eager forward
(BENCHMARKS.md, "Speed"), and a process that only answers a query never has to import torch (about
3 s on 2 cores): the first answer comes from NumPy, Pillow, ONNX Runtime and faiss alone.

The export is a cache, never an artifact of its own: it lives under ``$HASHINDEX_CACHE`` (default
``~/.cache/hashindex``) in ``onnx/``, named by the backbone's identity (model, weights sha256,
adapter sha256, input size), with a JSON record beside it holding that identity, the ONNX file's
own sha256 and the largest difference from torch's features measured when it was made. Loading
re-hashes the file and compares both, so a corrupt or foreign file is never used; torch stays the
reference (``--runtime torch``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.durable import publish_file, write_durably
from hashindex.core.errors import InputError, IntegrityError
from hashindex.core.spec import BackboneSpec, sha256_file

logger = logging.getLogger(__name__)

# Largest |ONNX - torch| feature difference accepted at export, relative to the features' largest
# magnitude: measured 3e-6 for EfficientNet-Lite0 (float reassociation in the convolutions).
TOLERANCE = 1e-4
OPSET = 17
_IDENTITY = ("model", "weights_sha256", "adapter_sha256", "image_size", "num_features")


def available() -> bool:
    """Whether ONNX Runtime is installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Where exported backbones are kept (``$HASHINDEX_CACHE/onnx``)."""
    root = os.environ.get("HASHINDEX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hashindex")
    return Path(root) / "onnx"


def _identity(spec: BackboneSpec) -> dict:
    return {k: getattr(spec, k) for k in _IDENTITY}


def cache_path(spec: BackboneSpec) -> Path | None:
    """The ONNX file for ``spec``, or None when the weights have no known hash (hub or random
    weights: nothing would tie a cached export to them)."""
    if spec.weights_sha256 is None:
        return None
    key = hashlib.sha256(json.dumps(_identity(spec), sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"{spec.model}-{spec.image_size}px-{key}.onnx"


@dataclass
class OnnxBackbone:
    """A backbone's features from an ONNX Runtime session (CPU).

    ``features`` takes and returns torch tensors, as :class:`hashindex.backbone.model.Backbone` does (the
    embed stage feeds it augmented views made by torch); ``features_np`` is the torch-free path.
    """

    session: object
    spec: BackboneSpec
    path: Path

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def features_np(self, x: np.ndarray) -> np.ndarray:
        """Pooled pre-logit features of a normalised ``(n, 3, S, S)`` float32 batch."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {"images": x})[0].astype(np.float32, copy=False)

    def features(self, x):
        import torch

        return torch.from_numpy(self.features_np(x.detach().cpu().contiguous().numpy()))


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # its warnings about unused initialisers are noise here
    if threads:  # a slice of cores shared with other workers: wait for work instead of spinning
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_onnx(spec: BackboneSpec) -> OnnxBackbone | None:
    """The cached export of ``spec``'s backbone, or None when there is none (or no ONNX Runtime).

    Raises:
        IntegrityError: the cached file's hash or identity differs from its record (remove the
            file to export it again).
    """
    path = cache_path(spec)
    if path is None or not path.is_file() or not available():
        return None
    record_path = path.with_suffix(".json")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(
            f"the record {record_path} of the cached ONNX backbone is unreadable ({e}): remove {path}"
        ) from None
    if record.get("identity") != json.loads(json.dumps(_identity(spec))):
        raise IntegrityError(f"the cached ONNX backbone {path} was exported from another backbone: remove it")
    if sha256_file(path) != record.get("onnx_sha256"):
        raise IntegrityError(f"the cached ONNX backbone {path} does not match its recorded sha256: remove it")
    return OnnxBackbone(_session(path), spec, path)


def export_onnx(backbone, check_batch: int = 4) -> OnnxBackbone:
    """Export a torch :class:`~hashindex.backbone.model.Backbone` (with its LoRA adapter, if any) to the
    cache, check that ONNX Runtime gives its features within :data:`TOLERANCE`, and return it.

    Raises:
        InputError: no ONNX Runtime, the weights have no known hash, or the export fails or
            disagrees with torch.
    """
    import torch

    spec = backbone.spec
    path = cache_path(spec)
    if not available():
        raise InputError("ONNX Runtime is not installed: pip install onnxruntime, or use --runtime torch")
    if path is None:
        raise InputError(
            f"the weights of {spec.model} have no recorded sha256 (hub or random weights): use --runtime torch"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Said once, at the level users see: the first image query or embed otherwise waits silently.
    logger.warning(
        "exporting %s to ONNX for ONNX Runtime, once (about half a minute); cached in %s", spec.model, path.parent
    )
    net = _Features(backbone.model).to("cpu").eval()
    x = torch.randn(check_batch, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))

    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                net,
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
            )
        with torch.inference_mode():
            ref = net(x).float().numpy()
        got = OnnxBackbone(_session(tmp), spec, tmp).features_np(x.numpy())
        diff = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
        if not diff <= TOLERANCE:
            raise InputError(
                f"the ONNX export of {spec.model} differs from torch by {diff:.2e} (relative), more than {TOLERANCE:g}: use --runtime torch"
            )
        record = {
            "identity": _identity(spec),
            "onnx_sha256": sha256_file(tmp),
            "max_rel_diff": diff,
            "torch": torch.__version__,
            "opset": OPSET,
        }
        # The record first, then the model: a crash in between leaves a record without a model
        # (nothing is loaded), never a model without its record.
        write_durably(
            path.with_suffix(".json"),
            lambda fh: fh.write((json.dumps(record, indent=1, sort_keys=True) + "\n").encode()),
        )
        publish_file(lambda _: None, path, tmp)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot export {spec.model} to ONNX ({type(e).__name__}: {e}): use --runtime torch") from None
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %s to %s (max relative difference from torch %.1e)", spec.model, path, diff)
    return OnnxBackbone(_session(path), spec, path)


def _Features(model):
    import torch

    class Features(torch.nn.Module):
        """The pooled pre-logit features, as Backbone.features computes them."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_head(self.m.forward_features(x), pre_logits=True)

    return Features(model)


def with_runtime(backbone, runtime: str, threads: int | None = None):
    """The backbone that ``runtime`` asks for (:data:`hashindex.core.config.Runtime`): the torch
    backbone itself, or its ONNX export (made on first use). ``threads``: the ONNX Runtime
    session's threads, for a worker that shares the cores with others (default: all cores).

    ``auto`` takes ONNX Runtime on the CPU when it is installed and the export works, and falls
    back to torch with a warning when it does not; ``onnx`` insists.

    Raises:
        InputError: ``onnx`` on a GPU, without ONNX Runtime, or for a backbone that cannot be
            exported.
    """
    if runtime == "torch" or (runtime == "auto" and (backbone.device.type != "cpu" or not available())):
        return backbone
    if backbone.device.type != "cpu":
        raise InputError("--runtime onnx runs on the CPU: use --device cpu, or --runtime torch on a GPU")
    try:
        ob = load_onnx(backbone.spec) or export_onnx(backbone)
        return ob if not threads else OnnxBackbone(_session(ob.path, threads), ob.spec, ob.path)
    except InputError as e:
        if runtime == "onnx":
            raise
        logger.warning("%s; embedding with torch", e)
        return backbone


def runtime_name(backbone) -> str:
    """``torch`` or ``onnxruntime``: what computed a backbone's features."""
    return "onnxruntime" if isinstance(backbone, OnnxBackbone) else "torch"
