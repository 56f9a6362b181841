"""Letterbox geometry in numpy, shared by the training pipeline, evaluation and the runtime.

An image of size (h, w) is resized with its aspect ratio kept to (new_h, new_w) and pasted at
(top, left) of a canvas of the model's input size, filled with PAD_VALUE.
"""

from typing import NamedTuple

import numpy as np

from tfqat.data.images import decode_image

PAD_VALUE = 114


class Letterbox(NamedTuple):
    scale_y: float  # new_h / h
    scale_x: float  # new_w / w
    top: int
    left: int
    new_h: int
    new_w: int


def letterbox_params(height: int, width: int, out_height: int, out_width: int) -> Letterbox:
    scale = min(out_height / height, out_width / width)
    new_h = max(1, min(out_height, int(round(height * scale))))
    new_w = max(1, min(out_width, int(round(width * scale))))
    top = (out_height - new_h) // 2
    left = (out_width - new_w) // 2
    return Letterbox(new_h / height, new_w / width, top, left, new_h, new_w)


def boxes_to_input(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Maps xyxy boxes (or any [..., 2k] xy pairs) from image to model-input pixels."""
    out = np.asarray(boxes_xyxy, np.float32).copy()
    out[..., 0::2] = out[..., 0::2] * lb.scale_x + lb.left
    out[..., 1::2] = out[..., 1::2] * lb.scale_y + lb.top
    return out


def boxes_to_image(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Inverse of `boxes_to_input`."""
    out = np.asarray(boxes_xyxy, np.float32).copy()
    out[..., 0::2] = (out[..., 0::2] - lb.left) / lb.scale_x
    out[..., 1::2] = (out[..., 1::2] - lb.top) / lb.scale_y
    return out


def letterbox_image(
    image: np.ndarray, out_height: int, out_width: int
) -> tuple[np.ndarray, Letterbox]:
    """Resizes an HxWx3 uint8 image into the letterboxed model input (uint8), with PIL."""
    from PIL import Image

    lb = letterbox_params(image.shape[0], image.shape[1], out_height, out_width)
    resized = np.asarray(
        Image.fromarray(image).resize((lb.new_w, lb.new_h), Image.BILINEAR), dtype=np.uint8
    )
    canvas = np.full((out_height, out_width, 3), PAD_VALUE, np.uint8)
    canvas[lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w] = resized
    return canvas, lb


def letterboxed_batches(dataset, input_size, batch_size: int, limit=None):
    """Yields (samples, float32 images [B,H,W,3], letterboxes) of a CocoDataset, in its order."""
    samples = dataset.samples[:limit] if limit else dataset.samples
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images, boxes = [], []
        for s in chunk:
            image, lb = letterbox_image(decode_image(s.path, dataset.exif_transpose), *input_size)
            images.append(image)
            boxes.append(lb)
        yield chunk, np.stack(images).astype(np.float32), boxes
