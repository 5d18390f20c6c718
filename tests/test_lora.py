"""LoRA layers against their formula, layer selection, save/load of adapters and the backbone identity."""

from __future__ import annotations

import json

import pytest
import tinyvit
import torch
from torch import nn

from hashindex.backbone.lora import (
    LoRAConfig,
    LoRALayer,
    attach_adapter,
    inject,
    load_adapter,
    lora_layers,
    save_adapter,
    target_layers,
)
from hashindex.backbone.model import backbone_from_spec, load_backbone
from hashindex.core.errors import InputError, MismatchError
from hashindex.core.spec import BackboneSpec, check_same_backbone


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    return tinyvit.write_weights(tmp_path_factory.mktemp("vit") / "vit.safetensors")


def _vit(weights, **kw):
    return load_backbone(tinyvit.NAME, weights=weights, image_size=32, device="cpu", **kw)


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in lora_layers(model).values():
        with torch.no_grad():
            m.lora_B.copy_(0.1 * torch.randn(m.lora_B.shape, generator=g))


def test_lora_linear_and_conv_follow_the_formula():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    conv = nn.Conv2d(12, 7, 1, stride=2)
    for base in (lin, conv):
        layer = LoRALayer(base, rank=4, alpha=8.0, dropout=0.0)
        x = torch.randn(3, 12) if base is lin else torch.randn(3, 12, 6, 6)
        torch.testing.assert_close(layer(x), base(x))  # B starts at zero
        with torch.no_grad():
            layer.lora_B.normal_()
        a, b = layer.lora_A.detach(), layer.lora_B.detach()
        if base is lin:
            want = base(x) + 2.0 * x @ a.T @ b.T
        else:  # a 1x1 convolution is a matrix product per pixel, on the same strided grid
            xs = x[:, :, ::2, ::2]
            want = base(x) + 2.0 * torch.einsum("or,ri,nihw->nohw", b, a, xs)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_default_layers_vit_and_convnet(vit_weights):
    vit = _vit(vit_weights).model
    names = target_layers(vit)
    assert sorted({n.split(".")[-1] for n in names}) == ["fc1", "fc2", "proj", "qkv"]
    assert len(names) == 2 * 4 and "head" not in names
    lite = load_backbone(image_size=32, device="cpu").model
    names = target_layers(lite)
    mods = dict(lite.named_modules())
    assert len(names) == 32 and all(mods[n].kernel_size == (1, 1) and mods[n].groups == 1 for n in names)
    assert "conv_head" in names and "classifier" not in names
    assert target_layers(lite, ("blocks.6.*", "conv_head")) == [
        "blocks.6.0.conv_pw",
        "blocks.6.0.conv_pwl",
        "conv_head",
    ]
    with pytest.raises(InputError, match="matches no"):
        target_layers(lite, ("blocks.*.conv_dw",))  # depthwise 3x3: not eligible


def test_adapters_change_features_and_round_trip(tmp_path, vit_weights):
    x = torch.randn(4, 3, 32, 32)
    plain = _vit(vit_weights)
    bb = _vit(vit_weights)
    inject(bb.model, target_layers(bb.model), LoRAConfig(rank=4, alpha=4.0))
    torch.testing.assert_close(bb.features(x), plain.features(x))  # zero-initialised B
    _randomise(bb.model)
    tuned = bb.features(x)
    assert (tuned - plain.features(x)).abs().max() > 1e-3
    sha = save_adapter(tmp_path, bb.model, LoRAConfig(rank=4, alpha=4.0), plain.spec)
    again = _vit(vit_weights, adapter=tmp_path)
    assert again.spec.adapter_sha256 == sha and again.spec.adapter == str(tmp_path.resolve())
    torch.testing.assert_close(again.features(x), tuned)
    # Re-created from the recorded spec (as query does), and refused with another hash.
    torch.testing.assert_close(backbone_from_spec(again.spec.to_dict(), device="cpu").features(x), tuned)
    with pytest.raises(MismatchError, match="adapter"):
        backbone_from_spec({**again.spec.to_dict(), "adapter_sha256": "0" * 64}, device="cpu")
    moved = {**again.spec.to_dict(), "adapter": str(tmp_path / "gone")}
    with pytest.raises(InputError, match="--adapter"):
        backbone_from_spec(moved, device="cpu")
    torch.testing.assert_close(backbone_from_spec(moved, device="cpu", adapter=str(tmp_path)).features(x), tuned)
    # Only the adapter's weights are stored, and its metadata carries alpha and the base identity.
    ad = load_adapter(tmp_path)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in ad.tensors) and ad.config.alpha == 4.0
    assert ad.base["model"] == tinyvit.NAME


def test_adapter_for_another_backbone_is_refused(tmp_path, vit_weights):
    bb = _vit(vit_weights)
    inject(bb.model, target_layers(bb.model), LoRAConfig(rank=2))
    save_adapter(tmp_path, bb.model, LoRAConfig(rank=2), bb.spec)
    with pytest.raises(MismatchError, match="trained on hashindex_test_vit"):
        load_backbone(image_size=32, device="cpu", adapter=tmp_path)  # EfficientNet-Lite0
    other = tinyvit.write_weights(tmp_path / "other.safetensors")
    torch.manual_seed(5)
    from safetensors.torch import save_file

    save_file({k: torch.randn(v.shape) for k, v in _vit(other).model.state_dict().items()}, other)
    with pytest.raises(MismatchError, match="differs in weights_sha256"):
        _vit(other, adapter=tmp_path)
    with pytest.raises(InputError, match="not an adapter"):
        attach_adapter(_vit(vit_weights), tmp_path / "nothing")


def test_tuned_and_untuned_specs_never_match(tmp_path, vit_weights):
    bb = _vit(vit_weights)
    inject(bb.model, target_layers(bb.model), LoRAConfig(rank=2))
    save_adapter(tmp_path, bb.model, LoRAConfig(rank=2), bb.spec)
    tuned = _vit(vit_weights, adapter=tmp_path).spec
    with pytest.raises(MismatchError, match="no adapter.*adapter_sha256|adapter_sha256"):
        check_same_backbone(bb.spec, tuned, "the index", "the queries")
    # A spec written before adapters existed (no adapter fields) loads and equals the untuned one.
    old = {k: v for k, v in json.loads(json.dumps(bb.spec.to_dict())).items() if not k.startswith("adapter")}
    assert BackboneSpec.from_dict(old) == bb.spec
    check_same_backbone(old, bb.spec, "old", "new")
    with pytest.raises(MismatchError):
        check_same_backbone(old, tuned, "old", "tuned")
