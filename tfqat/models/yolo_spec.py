"""What the YOLO detector's sizes and raw outputs are, without TensorFlow.

Shared by the model builder (`tfqat.models.yolo`), the loss, the recipe check and the numpy
post-processor that runs on devices without TensorFlow, so nothing here may import TensorFlow.
"""

import functools

import numpy as np

STRIDES = (8, 16, 32)
LEVELS = ("p3", "p4", "p5")
# The model's outputs, in this order: per level a box tensor [B, H/s, W/s, 4 * reg_max] of DFL
# logits (4 groups of reg_max bins: left, top, right, bottom distances in stride units) and a
# class tensor [B, H/s, W/s, num_classes] of logits.
OUTPUT_NAMES = tuple(name for level in LEVELS for name in (f"box_{level}", f"cls_{level}"))

# name -> (depth multiple, width multiple, max channels), as in Ultralytics' yolov8.yaml; "pico"
# and "femto" are CPU-demo sizes below "n". At 80 classes, reg_max 16 (all weights, incl. BN
# moving statistics; multiply-accumulates at 256x256):
#   n 3.17M (0.70 GMAC), s 11.19M (2.29), pico 1.18M (0.32), femto 0.61M (0.21).
# "n" has exactly the trainable weights of Ultralytics' YOLOv8n. The head's box branch is at
# least 4 * reg_max = 64 channels wide, which dominates the two small sizes.
SIZES = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "pico": (0.33, 0.125, 1024),
    "femto": (0.33, 0.0625, 1024),
}


def check_input_size(input_size) -> tuple[int, int]:
    """Returns (height, width) as ints; raises ValueError unless both are multiples of 32."""
    height, width = (int(v) for v in input_size)
    if height <= 0 or width <= 0 or height % max(STRIDES) or width % max(STRIDES):
        raise ValueError(
            f"input_size must be (height, width), both positive multiples of {max(STRIDES)}; "
            f"got {tuple(input_size)}"
        )
    return height, width


def make_anchors(input_size, strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres in input pixels and their strides, in the order of the flattened outputs
    (see `_anchors`); read-only arrays, computed once per input size."""
    return _anchors(check_input_size(input_size), tuple(strides))


@functools.lru_cache(maxsize=8)
def _anchors(input_size, strides) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres in input pixels and their strides, in the order of the flattened outputs.

    Levels follow `strides`; within a level anchors are row-major (y, then x), as a reshape of an
    NHWC head tensor to [B, H/s * W/s, C] lays them out. The anchor of cell (i, j) sits at
    ((j + 0.5) * s, (i + 0.5) * s).

    Returns:
      points: float32 [A, 2], (x, y) in input pixels.
      anchor_strides: float32 [A].
    """
    height, width = check_input_size(input_size)
    points, anchor_strides = [], []
    for s in strides:
        ys = (np.arange(height // s, dtype=np.float32) + 0.5) * s
        xs = (np.arange(width // s, dtype=np.float32) + 0.5) * s
        grid_x, grid_y = np.meshgrid(xs, ys)
        points.append(np.stack([grid_x.ravel(), grid_y.ravel()], axis=-1))
        anchor_strides.append(np.full(grid_x.size, s, np.float32))
    arrays = np.concatenate(points).astype(np.float32), np.concatenate(anchor_strides)
    for array in arrays:
        array.setflags(write=False)
    return arrays
