"""Top-down person crops in numpy/PIL: one affine warp for training, evaluation and runtime.

Coordinates are continuous pixels (pixel i covers [i, i+1)), the convention of COCO keypoints
and of PIL's affine transform, so no half-pixel shifts creep in between image and crop.
"""

import numpy as np

BOX_PADDING = 1.25


def crop_matrix(box_xywh, input_hw, padding=BOX_PADDING, scale=1.0, angle_deg=0.0, flip=False):
    """3x3 matrix mapping crop coordinates to image coordinates.

    The person box is expanded to the crop's aspect ratio and by `padding`, then scaled by
    `scale` (augmentation), rotated by `angle_deg` about its centre and optionally mirrored.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    centre = np.array([x + w / 2, y + h / 2])
    out_h, out_w = input_hw
    aspect = out_w / out_h
    w, h = max(w, 1.0), max(h, 1.0)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    pixel = w * padding * scale / out_w  # image pixels per crop pixel
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    linear = pixel * rotation
    if flip:
        linear = linear @ np.diag([-1.0, 1.0])
    offset = centre - linear @ np.array([out_w / 2, out_h / 2])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = offset
    return matrix


def warp_crop(image: np.ndarray, crop_to_image: np.ndarray, out_hw) -> np.ndarray:
    """Samples the crop (uint8 HxWx3) from `image` bilinearly; outside the image is black."""
    from PIL import Image

    out_h, out_w = out_hw
    coefficients = tuple(crop_to_image[:2].reshape(-1))
    warped = Image.fromarray(image).transform(
        (out_w, out_h), Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=(0, 0, 0)
    )
    return np.asarray(warped, dtype=np.uint8)


def crop_to_image_points(points_xy: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """Maps [..., 2] crop coordinates to image coordinates."""
    points = np.asarray(points_xy, np.float64)
    return points @ crop_to_image[:2, :2].T + crop_to_image[:2, 2]


def flip_permutation(keypoint_names) -> list[int]:
    """Index permutation that swaps every left_* keypoint with its right_* twin."""
    index = {name: i for i, name in enumerate(keypoint_names)}
    perm = []
    for name in keypoint_names:
        if name.startswith("left_"):
            twin = "right_" + name[len("left_") :]
        elif name.startswith("right_"):
            twin = "left_" + name[len("right_") :]
        else:
            twin = name
        perm.append(index.get(twin, index[name]))
    return perm
