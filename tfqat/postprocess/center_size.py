"""YOLO boxes as TFLite_Detection_PostProcess's centre-size encodings, in numpy only.

The op decodes box i against anchor i = (ya, xa, ha, wa), with scales 1:
    ycenter = ty * ha + ya,   h = exp(th) * ha   (and x, w alike)
and returns corners (ymin, xmin, ymax, xmax). Our anchors sit at the cell centres, one stride
tall and wide, in coordinates relative to the model input (the op's and MediaPipe's "RATIO"
boxes): ya = cy / H, xa = cx / W, ha = s / H, wa = s / W. A YOLO box of DFL distances
(l, t, r, b), in strides from the cell centre, then encodes as
    ty = (b - t) / 2,   tx = (r - l) / 2,   th = log(t + b),   tw = log(l + r),
independent of the input size. `decode_center_size` is the op's decode, for tests and for
reading the op's inputs.
"""

import numpy as np

from tfqat.models.yolo_spec import STRIDES, check_input_size, make_anchors

__all__ = [
    "MIN_SIZE",
    "center_size_anchors",
    "class_anchors",
    "class_offset",
    "decode_center_size",
    "encode_distances",
]

# Smallest box side (in strides) before the log: DFL expectations are positive, but a box of
# zero size must not become log(0).
MIN_SIZE = 1e-6


def center_size_anchors(input_size, strides=STRIDES) -> np.ndarray:
    """float32 [A, 4] (ya, xa, ha, wa) relative to the input, in the order of `make_anchors`."""
    height, width = check_input_size(input_size)
    points, anchor_strides = make_anchors((height, width), strides)
    return np.stack(
        [
            points[:, 1] / height,
            points[:, 0] / width,
            anchor_strides / height,
            anchor_strides / width,
        ],
        axis=-1,
    ).astype(np.float32)


def class_offset(input_size, reg_max: int = 16, strides=STRIDES) -> float:
    """A shift (relative units) larger than any two boxes' distance: box coordinates lie
    within (reg_max - 1) largest strides of the input, on either side."""
    height, width = check_input_size(input_size)
    reach = (reg_max - 1) * max(strides) / min(height, width)
    return float(np.ceil(2 * reach + 2))


def class_anchors(anchors, num_classes: int, offset: float) -> np.ndarray:
    """[C * A, 4] anchors, class-major, class c's moved down by c * offset (ya += c * offset)."""
    anchors = np.asarray(anchors, np.float32)
    shifts = np.zeros((num_classes, 1, 4), np.float32)
    shifts[:, 0, 0] = np.arange(num_classes) * offset
    return (anchors[None] + shifts).reshape(-1, 4)


def encode_distances(distances) -> np.ndarray:
    """[..., 4] DFL distances (l, t, r, b) in strides -> [..., 4] (ty, tx, th, tw)."""
    d = np.asarray(distances, np.float32)
    left, top, right, bottom = d[..., 0], d[..., 1], d[..., 2], d[..., 3]
    return np.stack(
        [
            (bottom - top) / 2,
            (right - left) / 2,
            np.log(np.maximum(top + bottom, MIN_SIZE)),
            np.log(np.maximum(left + right, MIN_SIZE)),
        ],
        axis=-1,
    ).astype(np.float32)


def decode_center_size(encodings, anchors) -> np.ndarray:
    """What TFLite_Detection_PostProcess makes of encodings: [..., 4] (ymin, xmin, ymax, xmax)."""
    e = np.asarray(encodings, np.float64)
    a = np.asarray(anchors, np.float64)
    ycenter = e[..., 0] * a[..., 2] + a[..., 0]
    xcenter = e[..., 1] * a[..., 3] + a[..., 1]
    half_h = 0.5 * np.exp(e[..., 2]) * a[..., 2]
    half_w = 0.5 * np.exp(e[..., 3]) * a[..., 3]
    return np.stack(
        [ycenter - half_h, xcenter - half_w, ycenter + half_h, xcenter + half_w], axis=-1
    ).astype(np.float32)
