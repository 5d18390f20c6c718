"""Where images come from: a folder, a list file, IDX files, or the named Fashion-MNIST set.

A source is an indexable collection of images with optional multi-hot labels. Every source returns
decoded RGB ``uint8`` arrays of shape ``(H, W, 3)``; decoding errors raise :class:`DecodeError` so
the embedding loop can record the failure and go on.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError
from hashindex.embedding.decode import IMAGE_EXTENSIONS, DecodeError, decode_image  # noqa: F401 - DecodeError: what load() raises

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass
class ImageSource:
    """An indexable image collection.

    Attributes:
        kind: ``folder``, ``list``, ``files`` (single image files), ``idx`` or ``fashion-mnist``.
        location: where it was read from (folder or file).
        names: one string per image: a path relative to ``location`` or ``split/index``.
        labels: ``(n, C)`` uint8 multi-hot labels, or None.
        label_names: C class names, or None.
        split: the split name for IDX sources.
    """

    kind: str
    location: str
    names: list[str]
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    split: str | None = None
    _pixels: np.ndarray | None = None  # in-memory images (IDX), (n, H, W) uint8

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> dict:
        """Provenance of the source, stored with the embeddings."""
        return {"kind": self.kind, "location": self.location, "split": self.split, "n": len(self)}

    def item_keys(self) -> list[str]:
        """What identifies each item: its name, and for files their size and modification time
        (IDX items are named by position; their content is covered by :meth:`digest`)."""
        if self._pixels is not None:
            return list(self.names)
        keys = []
        for name in self.names:
            try:
                st = os.stat(os.path.join(self.location, name))
                keys.append(f"{name}\t{st.st_size}\t{st.st_mtime_ns}")
            except OSError:
                keys.append(f"{name}\tmissing")
        return keys

    def digest(self, keys: list[str] | None = None) -> str:
        """sha256 of the item list (:meth:`item_keys`) and, for IDX sources, of the pixels and
        labels: a resumed or re-run embed compares it to notice a changed source."""
        h = hashlib.sha256()
        for key in self.item_keys() if keys is None else keys:
            h.update(key.encode("utf-8", "surrogateescape") + b"\n")
        if self._pixels is not None:
            h.update(np.ascontiguousarray(self._pixels).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()

    def load(self, i: int, draft: int | None = None) -> np.ndarray:
        """Decode image ``i`` as an RGB ``(H, W, 3)`` uint8 array (``draft``: see :func:`decode_image`).

        Raises:
            DecodeError: the image cannot be read or decoded.
        """
        if self._pixels is not None:
            return np.repeat(self._pixels[i][:, :, None], 3, axis=2)
        return decode_image(os.path.join(self.location, self.names[i]), draft)

    def subset(self, limit: int | None) -> ImageSource:
        """The first ``limit`` images (all when None)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise InputError(f"--limit must be positive, got {limit}")
        return ImageSource(
            kind=self.kind,
            location=self.location,
            names=self.names[:limit],
            labels=None if self.labels is None else self.labels[:limit],
            label_names=self.label_names,
            split=self.split,
            _pixels=None if self._pixels is None else self._pixels[:limit],
        )


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def from_folder(root: str | os.PathLike) -> ImageSource:
    """Images under a folder. Class subfolders give single labels; a flat folder gives none.

    Raises:
        InputError: the folder holds no images, or mixes images at its top with class folders.
    """
    root = Path(root)
    # Everything with an image extension but folders: a dangling link or a FIFO is an input that
    # fails (and is recorded), not one that silently disappears.
    top = sorted(p.name for p in root.iterdir() if not p.is_dir() and _is_image(p.name))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class: list[list[str]] = []
    for c in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(root / c):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            files += [os.path.join(rel, f) for f in sorted(filenames) if _is_image(f)]
        per_class.append(files)
    labelled = [(c, f) for c, f in zip(classes, per_class) if f]
    if labelled and top:
        raise InputError(
            f"{root} mixes {len(top)} images at its top level with class subfolders "
            f"({', '.join(c for c, _ in labelled[:3])}...): move the top-level images into a class folder"
        )
    if labelled:
        names = [f for _, files in labelled for f in files]
        label_names = [c for c, _ in labelled]
        labels = np.zeros((len(names), len(label_names)), dtype=np.uint8)
        row = 0
        for j, (_, files) in enumerate(labelled):
            labels[row : row + len(files), j] = 1
            row += len(files)
        return ImageSource("folder", os.path.abspath(root), names, labels, label_names)
    if not top:
        raise InputError(f"no images found in {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSource("folder", os.path.abspath(root), top)


def from_list_file(list_file: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageSource:
    """A DeepHash-style list: ``relative/path l1 l2 ... lC`` (0/1 multi-hot) per line.

    Args:
        list_file: the text file.
        root: folder the paths are relative to (default: the list file's folder).

    Raises:
        InputError: empty file, ragged or non-binary label columns.
    """
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    names: list[str] = []
    rows: list[list[int]] = []
    try:
        lines = list(enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1))
    except UnicodeDecodeError:
        raise InputError(
            f"{list_file} is not a list file (not UTF-8 text); give a folder, an image, a list file or 'fashion-mnist'"
        ) from None
    for lineno, line in lines:
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [int(v) for v in parts[1:]]
        except ValueError:
            raise InputError(f"{list_file}:{lineno}: labels must be 0/1 integers: {line.strip()!r}") from None
        if any(v not in (0, 1) for v in vals):
            raise InputError(f"{list_file}:{lineno}: labels must be a 0/1 multi-hot vector")
        if rows and len(vals) != len(rows[0]):
            raise InputError(f"{list_file}:{lineno}: {len(vals)} label columns, but line 1 has {len(rows[0])}")
        names.append(parts[0])
        rows.append(vals)
    if not names:
        raise InputError(f"{list_file} lists no images")
    labels = np.asarray(rows, dtype=np.uint8) if rows[0] else None
    label_names = [str(c) for c in range(labels.shape[1])] if labels is not None else None
    return ImageSource("list", os.path.abspath(root), names, labels, label_names)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise InputError(f"cannot read IDX file {path} (damaged or not gzip): {type(e).__name__}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise InputError(
            f"{path} is truncated: its header announces {ndim} dimensions but ends after {len(data)} bytes"
        )
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise InputError(f"{path} is truncated: header says {shape}, found {arr.size} bytes")
    return arr.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def from_idx(folder: str | os.PathLike, split: str = "train", label_names=None, kind="idx") -> ImageSource:
    """IDX files in the MNIST layout: ``train-images-idx3-ubyte[.gz]``, ``t10k-...`` for test.

    Raises:
        InputError: unknown split or missing/inconsistent files.
    """
    folder = Path(folder)
    prefixes = {"train": "train", "test": "t10k", "t10k": "t10k"}
    if split not in prefixes:
        raise InputError(f"unknown split {split!r} for IDX data: use 'train' or 'test'")
    p = prefixes[split]
    img_path = _find_idx(folder, f"{p}-images-idx3-ubyte")
    if img_path is None:
        raise InputError(f"no {p}-images-idx3-ubyte[.gz] in {folder}")
    images = _read_idx(img_path)
    if images.ndim != 3:
        raise InputError(f"{img_path} holds an array of shape {images.shape}, expected (n, H, W)")
    labels = label_names_out = None
    lab_path = _find_idx(folder, f"{p}-labels-idx1-ubyte")
    if lab_path is not None:
        y = _read_idx(lab_path)
        if y.shape != (images.shape[0],):
            raise InputError(f"{lab_path} has {y.shape} labels for {images.shape[0]} images")
        ncls = int(y.max()) + 1
        labels = np.zeros((len(y), ncls), dtype=np.uint8)
        labels[np.arange(len(y)), y] = 1
        label_names_out = list(label_names) if label_names else [str(c) for c in range(ncls)]
    names = [f"{split}/{i}" for i in range(images.shape[0])]
    return ImageSource(kind, os.path.abspath(folder), names, labels, label_names_out, split, images)


def open_source(
    spec: str,
    *,
    split: str = "train",
    root: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
) -> ImageSource:
    """Resolve a SOURCE argument.

    Args:
        spec: ``fashion-mnist``, a folder of images, a folder of IDX files, a list file, or a
            single image file (one unlabelled item).
        split: split of IDX data (``train``/``test``).
        root: folder the paths of a list file are relative to.
        data_dir: where the Fashion-MNIST IDX files are (default the Debian package's folder).
        limit: keep only the first ``limit`` images.

    Raises:
        InputError: the source does not exist or holds no usable images.
    """
    if spec == "fashion-mnist":
        folder = Path(data_dir) if data_dir else FASHION_MNIST_DIR
        if not folder.is_dir():
            raise InputError(
                f"Fashion-MNIST not found in {folder}: install the Debian package "
                "'dataset-fashion-mnist' or pass --data-dir"
            )
        src = from_idx(folder, split, FASHION_MNIST_CLASSES, kind="fashion-mnist")
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"source {spec!r} does not exist (expected a folder, a list file or 'fashion-mnist')")
        if path.is_dir():
            if _find_idx(path, "train-images-idx3-ubyte") or _find_idx(path, "t10k-images-idx3-ubyte"):
                src = from_idx(path, split)
            else:
                src = from_folder(path)
        elif _is_image(path.name):
            src = ImageSource("files", str(path.parent.resolve()), [path.name])
        else:
            src = from_list_file(path, root)
    return src.subset(limit)
