"""Backbone identity without torch: the spec every artifact records, file hashes, and the check
that two artifacts come from the same backbone.

Reading an embeddings file, loading an index or answering a query with stored embeddings needs
these but never a model, so they live apart from :mod:`hashindex.backbone.model` (which imports torch).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from hashindex.core.errors import InputError, MismatchError

DEFAULT_MODEL = "tf_efficientnet_lite0"
EXTERNAL_WEIGHTS = "external"  # embeddings made outside hashindex (import): no model to run
Interpolation = Literal["bicubic", "bilinear", "nearest"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)


@dataclass(frozen=True)
class BackboneSpec:
    """What identifies a backbone and its preprocessing; stored in every artifact.

    Attributes:
        model: timm model name.
        weights: where the weights came from: a file path, ``hub``, ``packaged:<file>`` or ``random``.
        weights_sha256: sha256 of the weights file (None for hub/random).
        image_size: input resolution (square).
        crop_pct: centre-crop fraction of the eval transform.
        interpolation: resize filter.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        num_features: embedding width.
        adapter: folder of the LoRA adapter on the backbone (``hashindex finetune``), or None.
        adapter_sha256: sha256 of the adapter's weights file, or None.
    """

    model: str
    weights: str
    weights_sha256: str | None
    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_features: int
    adapter: str | None = None
    adapter_sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BackboneSpec:
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# Fields that must agree between artifacts (the weights' path may differ between machines).
_IDENTITY = (
    "model",
    "weights_sha256",
    "image_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "num_features",
    "adapter_sha256",
)


def check_same_backbone(a: BackboneSpec | dict, b: BackboneSpec | dict, a_name: str, b_name: str) -> None:
    """Raise MismatchError, naming both sides, unless two artifacts come from the same backbone."""
    da = a.to_dict() if isinstance(a, BackboneSpec) else dict(a)
    db = b.to_dict() if isinstance(b, BackboneSpec) else dict(b)
    diff = [k for k in _IDENTITY if json.dumps(da.get(k)) != json.dumps(db.get(k))]
    if diff:

        def desc(d):
            tuned = f", LoRA adapter {d['adapter_sha256'][:12]}" if d.get("adapter_sha256") else ", no adapter"
            return f"{d.get('model')} at {d.get('image_size')} px, weights {str(d.get('weights_sha256'))[:12]}{tuned}"

        raise MismatchError(
            f"{a_name} come from {desc(da)}, but {b_name} from {desc(db)} (differs in {', '.join(diff)})"
        )


def external_spec(model_name: str, dim: int) -> BackboneSpec:
    """The backbone record of imported embeddings: a name, no weights hashindex can load."""
    return BackboneSpec(
        model_name, EXTERNAL_WEIGHTS, None, 0, 1.0, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), int(dim)
    )


def check_image_queries(backbone: BackboneSpec | dict, where: str) -> None:
    """Refuse to embed query images for an artifact whose embeddings were imported.

    Raises:
        InputError: the backbone is external.
    """
    d = backbone.to_dict() if isinstance(backbone, BackboneSpec) else dict(backbone)
    if d.get("weights") == EXTERNAL_WEIGHTS:
        raise InputError(
            f"{where} was built from imported embeddings (model {d.get('model')!r}, made outside hashindex), "
            "so hashindex cannot embed query images for it: embed the queries with that model, import them "
            "with `hashindex import ... --model-name` and query with --embeddings"
        )
