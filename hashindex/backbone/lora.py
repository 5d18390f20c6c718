"""LoRA adapters on a frozen timm backbone: layers, injection, save and load.

Our own small LoRA rather than ``peft``: timm's layers we adapt are plain ``nn.Linear`` (ViT
attention qkv/proj, MLP fc1/fc2) and 1x1 ``nn.Conv2d`` (the pointwise convolutions of
EfficientNet/MobileNet/ResNet blocks), for which a LoRA is a few lines; owning it gives exact
control of initialisation, dropout and which modules get adapters, a safetensors file whose bytes
(tensors plus the metadata that affects the output) are the adapter's identity, no merge step
and no dependency.

An adapted layer computes ``base(x) + (alpha / rank) · B(A(dropout(x)))`` with ``A`` of shape
``(rank, in)`` (Kaiming-uniform init) and ``B`` of shape ``(out, rank)`` (zeros), so a fresh
adapter leaves the features unchanged. The base layer's weights are never touched.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hashindex.backbone.frozen import Backbone
from hashindex.core.errors import InputError, IntegrityError, MismatchError
from hashindex.core.spec import BackboneSpec, sha256_file

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_JSON = "adapter.json"
ADAPTER_FORMAT = 1
# What of the base backbone an adapter is bound to (its layers' shapes and the weights it adapts),
# and the preprocessing it was trained with (the default when embedding with it).
_BASE_IDENTITY = ("model", "weights_sha256", "num_features")
_BASE_PREPROCESS = ("image_size", "crop_pct", "interpolation")


@dataclass(frozen=True)
class LoRAConfig:
    """Shape of the adapters (the paper's defaults).

    Attributes:
        rank: inner dimension r of each adapter.
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout on the adapter's input while training.
        layers: ``fnmatch`` patterns of module names to adapt; empty: every eligible layer
            (all ``Linear`` and 1x1 ``Conv2d`` layers except the classifier).
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.1
    layers: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.rank < 1:
            raise InputError(f"--rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise InputError(f"--alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"--lora-dropout must be in [0, 1), got {self.dropout}")


class LoRALayer(nn.Module):
    """A frozen ``Linear`` or 1x1 ``Conv2d`` plus a trainable low-rank update."""

    def __init__(
        self, base: nn.Module, rank: int, alpha: float, dropout: float, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.base = base
        self.conv = isinstance(base, nn.Conv2d)
        n_in = base.in_channels if self.conv else base.in_features
        n_out = base.out_channels if self.conv else base.out_features
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, n_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_out, rank, device=w.device, dtype=w.dtype))
        # nn.Linear's own init of a (rank, in) weight, drawn from a seeded generator.
        bound = 1.0 / math.sqrt(n_in)
        with torch.no_grad():
            a = torch.rand(rank, n_in, generator=generator) * 2 * bound - bound
            self.lora_A.copy_(a)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x)
        if self.conv:
            h = F.conv2d(h, self.lora_A[:, :, None, None].to(h.dtype), stride=self.base.stride)
            h = F.conv2d(h, self.lora_B[:, :, None, None].to(h.dtype))
        else:
            h = F.linear(F.linear(h, self.lora_A.to(h.dtype)), self.lora_B.to(h.dtype))
        return y + self.scale * h


def _eligible(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    if isinstance(module, nn.Conv2d) and not isinstance(module, LoRALayer):
        # 1x1, ungrouped, undilated, unpadded: then A and B are 1x1 convolutions too.
        return (
            module.kernel_size == (1, 1)
            and module.groups == 1
            and module.dilation == (1, 1)
            and module.padding in ((0, 0), "valid")
        )
    return False


def target_layers(model: nn.Module, patterns: tuple[str, ...] = ()) -> list[str]:
    """Names of the modules that get adapters.

    Args:
        model: a timm model.
        patterns: ``fnmatch`` patterns on module names (``blocks.5.*``, ``*.qkv``); empty: all
            eligible layers. The classifier is never adapted (its output is not used).

    Raises:
        InputError: a pattern matches no eligible layer.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = [n for n, m in model.named_modules() if n and _eligible(m) and m is not head]
    if not patterns:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise InputError(
                f"--lora-layers pattern {p!r} matches no Linear or 1x1 Conv2d layer of {type(model).__name__} "
                f"(e.g. {', '.join(names[:3])}, ..., {names[-1] if names else 'none'})"
            )
    return chosen


def inject(model: nn.Module, names: list[str], cfg: LoRAConfig, seed: int = 0) -> list[LoRALayer]:
    """Replace the named modules by :class:`LoRALayer` wrappers (in place); returns the wrappers."""
    gen = torch.Generator().manual_seed(int(seed))
    layers = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if not _eligible(base):
            raise InputError(f"layer {name} ({type(base).__name__}) cannot take a LoRA adapter")
        layer = LoRALayer(base, cfg.rank, cfg.alpha, cfg.dropout, gen).train(base.training)  # eval stays eval
        setattr(parent, child, layer)
        layers.append(layer)
    return layers


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALayer)}


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights, keyed ``<layer>.lora_A`` / ``<layer>.lora_B`` (float32, CPU)."""
    out = {}
    for n, m in lora_layers(model).items():
        out[f"{n}.lora_A"] = m.lora_A.detach().float().cpu().contiguous()
        out[f"{n}.lora_B"] = m.lora_B.detach().float().cpu().contiguous()
    return out


def set_adapter_training(model: nn.Module, on: bool) -> None:
    """Only the adapters' dropout trains; the backbone (its BatchNorms included) stays in eval mode."""
    for m in lora_layers(model).values():
        m.dropout.train(on)


@dataclass(frozen=True)
class Adapter:
    """A saved adapter: where it is, its identity, shape and the backbone it was trained on."""

    path: Path
    sha256: str
    config: LoRAConfig
    base: dict
    tensors: dict[str, torch.Tensor]

    @property
    def layers(self) -> list[str]:
        return sorted({k.rsplit(".", 1)[0] for k in self.tensors})


def save_adapter(out_dir: str | os.PathLike, model: nn.Module, cfg: LoRAConfig, base: BackboneSpec, write=None) -> str:
    """Write ``adapter.safetensors`` into ``out_dir``; returns its sha256.

    The file's metadata holds everything besides the tensors that changes the output (alpha,
    rank) and the base backbone's identity, so the file's hash identifies the tuned backbone.
    ``write(path, data)`` writes bytes (a durable writer); default a plain write.
    """
    from safetensors.torch import save

    doc = {
        "format": ADAPTER_FORMAT,
        "lora": asdict(cfg),
        "base": {k: base.to_dict()[k] for k in _BASE_IDENTITY + _BASE_PREPROCESS},
    }
    # One metadata key: safetensors writes several in no fixed order, and the bytes must be stable.
    data = save(adapter_tensors(model), metadata={"hashindex_adapter": json.dumps(doc, sort_keys=True)})
    path = Path(out_dir) / ADAPTER_WEIGHTS
    if write is None:
        path.write_bytes(data)
    else:
        write(path, data)
    return sha256_file(path)


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter folder (made by ``hashindex finetune``) or its ``adapter.safetensors``.

    Raises:
        InputError: no adapter there.
        IntegrityError: the file is unreadable or its metadata is incomplete.
    """
    from safetensors import safe_open

    p = Path(path)
    f = p / ADAPTER_WEIGHTS if p.is_dir() else p
    if not f.is_file():
        raise InputError(f"{p} is not an adapter (needs {ADAPTER_WEIGHTS}; made by `hashindex finetune`)")
    try:
        with safe_open(str(f), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["hashindex_adapter"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        fmt, lora, base = int(meta["format"]), meta["lora"], meta["base"]
        cfg = LoRAConfig(int(lora["rank"]), float(lora["alpha"]), float(lora["dropout"]), tuple(lora["layers"]))
    except Exception as e:  # safetensors' own errors, missing or malformed metadata
        raise IntegrityError(f"adapter {f} is unreadable or corrupt: {type(e).__name__}: {e}") from None
    if fmt > ADAPTER_FORMAT:
        raise InputError(f"adapter {f} has format {fmt}; this hashindex reads up to {ADAPTER_FORMAT}")
    return Adapter(f.parent.resolve(), sha256_file(f), cfg, base, tensors)


def attach_adapter(
    backbone: Backbone, adapter: Adapter | str | os.PathLike, expect_sha256: str | None = None
) -> Backbone:
    """Put a saved adapter on a backbone (in place) and name it in the backbone's spec.

    Raises:
        MismatchError: the adapter was trained on another backbone, its layers do not fit, or
            its hash differs from ``expect_sha256``.
    """
    ad = adapter if isinstance(adapter, Adapter) else load_adapter(adapter)
    if expect_sha256 is not None and ad.sha256 != expect_sha256:
        raise MismatchError(
            f"adapter {ad.path} has sha256 {ad.sha256[:12]}…, but the artifact was made with {expect_sha256[:12]}…"
        )
    spec = backbone.spec.to_dict()
    diff = [k for k in _BASE_IDENTITY if json.dumps(ad.base.get(k)) != json.dumps(spec.get(k))]
    if diff:
        raise MismatchError(
            f"adapter {ad.path} was trained on {ad.base.get('model')} with weights {str(ad.base.get('weights_sha256'))[:12]}, "
            f"not on {spec['model']} with weights {str(spec['weights_sha256'])[:12]} (differs in {', '.join(diff)})"
        )
    if backbone.spec.adapter_sha256 is not None:
        raise InputError("the backbone already carries an adapter")
    try:
        inject(backbone.model, ad.layers, ad.config)
        stray = backbone.model.load_state_dict(
            {k: v.to(backbone.device) for k, v in ad.tensors.items()}, strict=False
        ).unexpected_keys
    except (InputError, AttributeError, RuntimeError) as e:
        raise MismatchError(f"adapter {ad.path} does not fit {spec['model']}: {e}") from None
    if stray:
        raise MismatchError(f"adapter {ad.path} does not fit {spec['model']}: no layers for {', '.join(stray[:3])}")
    backbone.model.eval().requires_grad_(False)
    logger.info("adapter %s: %d layers, rank %d", ad.path, len(ad.layers), ad.config.rank)
    return Backbone(
        backbone.model, replace(backbone.spec, adapter=str(ad.path), adapter_sha256=ad.sha256), backbone.device
    )
