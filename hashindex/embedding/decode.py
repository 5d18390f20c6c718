"""Decoding one image file (or a PIL image) into RGB uint8, with the checks that keep a bad file
from hanging or exhausting the caller: regular files only, a pixel limit read from the header
before any pixel is decoded, every mode converted, EXIF orientation applied."""

from __future__ import annotations

import os
import stat

import numpy as np

from hashindex.core.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

# Refuse images whose header claims more pixels than this (decompression bombs).
MAX_IMAGE_PIXELS = 178_956_970


class DecodeError(InputError):
    """One image could not be decoded; carries the error class name and message."""

    def __init__(
        self,
        path: str,
        error: BaseException | None = None,
        *,
        error_class: str | None = None,
        message: str | None = None,
    ):
        self.path = path
        self.error_class = error_class or type(error).__name__
        self.message = message or str(error or "") or self.error_class
        super().__init__(f"{path}: {self.error_class}: {self.message}")

    def __reduce__(self):  # it crosses process boundaries (data-loader workers)
        return (_rebuild_decode_error, (self.path, self.error_class, self.message))


def _rebuild_decode_error(path: str, error_class: str, message: str) -> DecodeError:
    return DecodeError(path, error_class=error_class, message=message)


def decode_image(path: str, draft: int | None = None) -> np.ndarray:
    """Decode one image file to RGB uint8, applying its EXIF orientation.

    ``draft``: a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4, 1/8) that keeps both
    sides at least ``draft`` pixels (Pillow's draft mode), which is several times faster for a
    photo much larger than the base image it is resized to (BENCHMARKS.md: the features stay
    within the tolerance stated there). Other formats decode in full.

    Transparent images (RGBA, LA, palette or gray with a transparent colour) are composited over
    white; palette, CMYK, 1-bit, 16-bit, 32-bit and float images are converted to 8-bit RGB
    (16-bit values are scaled by 255/65535). Only regular files are read (a FIFO or device named
    ``x.jpg`` would block), and an image whose header claims more than :data:`MAX_IMAGE_PIXELS`
    pixels is refused before any pixel is decoded, so no single file can hang the caller or
    exhaust its memory.

    Raises:
        DecodeError: for any failure (missing, not a regular file, empty, truncated, not an
            image, too large, an unsupported mode); it names the error class and message.
    """
    import warnings

    from PIL import Image, ImageOps

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {path}")
        if st.st_size == 0:
            raise OSError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow's own check (a warning, then an error at twice its limit, quoting that) is
            # replaced by ours, made on the header before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(
                        f"image of {w}x{h} = {w * h} pixels exceeds the limit of {MAX_IMAGE_PIXELS} (possible decompression bomb)"
                    )
                if draft and im.format == "JPEG":
                    im.draft(None, (draft, draft))
                im.load()
                rgb = _to_rgb(ImageOps.exif_transpose(im))
    except Exception as e:
        raise DecodeError(path, e) from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0 or rgb.shape[2] != 3:
        raise DecodeError(path, ValueError(f"unusable image shape {rgb.shape}"))
    return np.ascontiguousarray(rgb)


def pil_to_rgb(im) -> np.ndarray:
    """A PIL image as ``(H, W, 3)`` uint8, as files are decoded (EXIF orientation applied,
    transparency over white, any mode converted)."""
    from PIL import ImageOps

    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS or w * h == 0:
        raise InputError(f"an image of {w}x{h} pixels: images must have between 1 and {MAX_IMAGE_PIXELS} pixels")
    return np.ascontiguousarray(_to_rgb(ImageOps.exif_transpose(im)))


def _to_rgb(im) -> np.ndarray:
    """Any Pillow mode → ``(H, W, 3)`` uint8."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.round(a * (255.0 / 65535.0)).astype(np.uint8))
    elif im.mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = a.max() if a.size else 0.0
        if im.mode == "F" and hi <= 1.0:
            scale = 255.0
        elif hi <= 255:
            scale = 1.0
        elif hi <= 65535:
            scale = 255.0 / 65535.0
        else:
            scale = 255.0 / hi
        im = Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8))
    if im.mode in ("P", "PA") or ("transparency" in im.info and im.mode in ("L", "RGB", "1")):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
