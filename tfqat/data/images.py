"""Image decoding and the cache folder, shared by the COCO reader, the synthetic sets, the
pipelines and the tools: numpy + PIL only (no TensorFlow)."""

from __future__ import annotations

import contextlib
import os

import numpy as np
from PIL import Image, ImageOps

# The image files the readers take (`file_name` may be upper case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def default_cache_dir() -> str:
    """$TFQAT_CACHE_DIR, else ~/.cache/tfqat: where image checks and synthetic sets are cached."""
    return os.environ.get("TFQAT_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfqat"
    )


def first_image_file(folder: str) -> str | None:
    """The first JPEG or PNG file found in `folder` or its sub-folders; None if it has none."""
    for root, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                return os.path.join(root, name)
    return None


def decode_image(path: str, exif_transpose: bool = False) -> np.ndarray:
    """Decodes an image file fully into an HxWx3 uint8 RGB array.

    EXIF orientation is ignored unless `exif_transpose` (as TensorFlow's decoders and COCO's
    declared sizes do). Truncated files raise unless PIL's LOAD_TRUNCATED_IMAGES was switched on.
    """
    with _decoded_rgb(path, exif_transpose) as img:
        return np.array(img, dtype=np.uint8)


def decoded_size(path: str, exif_transpose: bool = False) -> tuple[int, int]:
    """(width, height) of what `decode_image` returns, decoded in full as it does (a truncated or
    undecodable file raises) but without the copy into numpy, which holds the GIL."""
    with _decoded_rgb(path, exif_transpose) as img:
        return img.size


@contextlib.contextmanager
def _decoded_rgb(path: str, exif_transpose: bool):
    with Image.open(path) as img:
        img.load()
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        yield _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency is only honoured through RGBA
    return img.convert("RGB")
