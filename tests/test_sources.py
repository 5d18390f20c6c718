"""Image sources: folders, list files, IDX files, decoding."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from hashindex.core.errors import InputError
from hashindex.embedding.sources import DecodeError, decode_image, open_source


def _img(path, color=(200, 10, 10), size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_with_class_subfolders(tmp_path):
    _img(tmp_path / "cat" / "a.png")
    _img(tmp_path / "cat" / "sub" / "b.jpg")
    _img(tmp_path / "dog" / "c.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    src = open_source(str(tmp_path))
    assert src.names == ["cat/a.png", "cat/sub/b.jpg", "dog/c.png"]
    assert src.label_names == ["cat", "dog"]
    np.testing.assert_array_equal(src.labels, [[1, 0], [1, 0], [0, 1]])
    assert src.load(0).shape == (12, 20, 3)


def test_flat_folder_has_no_labels(tmp_path):
    _img(tmp_path / "b.png")
    _img(tmp_path / "a.jpg")
    src = open_source(str(tmp_path))
    assert src.names == ["a.jpg", "b.png"] and src.labels is None


def test_empty_and_mixed_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(str(tmp_path / "empty"))
    _img(tmp_path / "mixed" / "top.png")
    _img(tmp_path / "mixed" / "cls" / "x.png")
    with pytest.raises(InputError, match="mixes"):
        open_source(str(tmp_path / "mixed"))
    with pytest.raises(InputError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"))


def test_list_file_multi_label(tmp_path):
    _img(tmp_path / "imgs" / "a.png")
    _img(tmp_path / "imgs" / "b.png")
    lst = tmp_path / "train.txt"
    lst.write_text("imgs/a.png 1 0 1\nimgs/b.png 0 1 0\n")
    src = open_source(str(lst))
    np.testing.assert_array_equal(src.labels, [[1, 0, 1], [0, 1, 0]])
    assert src.load(1).shape == (12, 20, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("imgs/a.png 1 0\nimgs/b.png 0 1 1\n")
    with pytest.raises(InputError, match="label columns"):
        open_source(str(bad))
    bad.write_text("imgs/a.png 1 2\n")
    with pytest.raises(InputError, match="0/1"):
        open_source(str(bad))


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_folder(tmp_path, rng):
    imgs = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 2, 1, 2, 0]))
    src = open_source(str(tmp_path), split="test", limit=4)
    assert len(src) == 4 and src.names[3] == "test/3"
    np.testing.assert_array_equal(src.labels.argmax(1), [0, 2, 1, 2])
    np.testing.assert_array_equal(src.load(2), np.repeat(imgs[2][:, :, None], 3, axis=2))
    with pytest.raises(InputError, match="train-images"):
        open_source(str(tmp_path), split="train")


def test_fashion_mnist_package():
    src = open_source("fashion-mnist", split="test")
    assert len(src) == 10_000 and src.labels.shape == (10_000, 10)
    assert src.label_names[9] == "Ankle boot"
    assert src.labels[0].argmax() == 9  # the first test image is an ankle boot
    assert src.load(0).shape == (28, 28, 3)


def test_decode_conversions(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "t.png"))[0, 0], [255, 255, 255])
    Image.new("L", (3, 5), 77).save(tmp_path / "g.png")
    assert decode_image(str(tmp_path / "g.png")).shape == (5, 3, 3)
    Image.new("CMYK", (3, 3), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert decode_image(str(tmp_path / "c.jpg")).shape == (3, 3, 3)
    a16 = np.full((2, 2), 65535, np.uint16)
    Image.fromarray(a16).save(tmp_path / "h.png")
    assert decode_image(str(tmp_path / "h.png")).max() == 255


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_undecodable_files_raise_decode_error(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(DecodeError) as e:
        decode_image(str(p))
    assert e.value.path == str(p) and e.value.error_class
