"""The real packaged EfficientNet-Lite0 weights through timm, and safe weight loading."""

import pickle

import pytest
import torch

from hashindex.backbone.augment import eval_view
from hashindex.backbone.model import backbone_from_spec, load_backbone
from hashindex.backbone.preprocess import base_size, to_base
from hashindex.backbone.weights import read_state_dict
from hashindex.core.errors import InputError, MismatchError


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("tf_efficientnet_lite0", image_size=224, device="cpu")


def _predict(bb, img):
    x = torch.from_numpy(to_base(img, base_size(bb.spec))).permute(2, 0, 1)[None]
    return bb.classify(eval_view(x, bb.spec))[0].softmax(-1)


def test_packaged_weights_classify_known_photos(lite0):
    from skimage import data

    cat = _predict(lite0, data.chelsea())  # a tabby cat
    assert int(cat.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    cup = _predict(lite0, data.coffee())  # a cup of espresso
    assert int(cup.argmax()) in (967, 504, 968)  # espresso, coffee mug, cup
    assert lite0.spec.weights.startswith("packaged:") and len(lite0.spec.weights_sha256) == 64
    assert lite0.spec.num_features == 1280 and lite0.spec.mean == (0.5, 0.5, 0.5)


def test_features_are_pooled_pre_logits(lite0):
    x = torch.randn(2, 3, 64, 64)
    f = lite0.features(x)
    assert f.shape == (2, 1280) and f.dtype == torch.float32


def test_weights_file_roundtrip_and_hash_check(tmp_path, lite0):
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(f))
    bb = load_backbone("tf_efficientnet_lite0", weights=str(f), image_size=64, device="cpu")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(bb.features(x), lite0.features(x))
    with pytest.raises(MismatchError, match="sha256"):
        backbone_from_spec({**bb.spec.to_dict(), "weights_sha256": "0" * 64}, device="cpu")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_pickle_bearing_checkpoint_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    with open(ckpt, "wb") as fh:
        pickle.dump({"w": _Evil(str(marker))}, fh)
    with pytest.raises(InputError, match="weights_only"):
        read_state_dict(str(ckpt))
    assert not marker.exists()


def test_bad_weights_and_models(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_state_dict(str(tmp_path / "missing.pth"))
    torch.save({"a": torch.zeros(3)}, tmp_path / "small.pth")
    with pytest.raises(MismatchError, match="do not fit"):
        load_backbone("tf_efficientnet_lite0", weights=str(tmp_path / "small.pth"), device="cpu")
    with pytest.raises(InputError, match="unknown timm model"):
        load_backbone("no_such_model_xyz", device="cpu")
    with pytest.raises(InputError, match="no offline weights"):
        load_backbone("resnet18", device="cpu")
