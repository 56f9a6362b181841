"""Decoding of the pose network's heatmap logits, in numpy only.

Shared by every backend (Keras, TFLite, OpenVINO, ONNX) and run on devices without TensorFlow:
nothing here, nor anything it imports, may import TensorFlow.

Sub-pixel refinement is DARK's (Zhang et al., "Distribution-Aware Coordinate Representation for
Human Pose Estimation", CVPR 2020): the heatmap sigmoid(logits) is smoothed with a Gaussian, and
one Newton step on its logarithm around the maximum finds the mode. A Gaussian target blurred by
a Gaussian is still a Gaussian, whose logarithm is exactly quadratic, so the step recovers an
encoded keypoint to within a small fraction of a heatmap pixel; on an int8 output the smoothing
also averages out the quantisation steps.
"""

import numpy as np

from tfqat.data.crop import crop_to_image_points

__all__ = ["DEFAULT_BLUR_SIGMA", "SCORE_THRESHOLD", "decode", "to_coco_results", "to_image"]

# Smoothing before the sub-pixel step, heatmap pixels. On trained models 1.0 scores about 0.02
# OKS AP more than no smoothing (float and int8 alike): it averages out the noise of predicted
# heatmaps. Its zero padding pulls a keypoint within ~2 heatmap pixels of the crop border
# slightly inward; with blur_sigma=0 an encoded target decodes exactly everywhere.
DEFAULT_BLUR_SIGMA = 1.0
# Keypoints whose confidence exceeds this count towards the person's score (as in mmpose/HRNet).
SCORE_THRESHOLD = 0.2


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _gaussian_blur(maps, sigma):
    """Separable Gaussian blur of [N, h, w] maps; outside the map counts as 0 (background)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = maps
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        size = out.shape[axis]
        out = sum(
            k * np.take(padded, np.arange(i, i + size), axis=axis) for i, k in enumerate(kernel)
        )
    return out


def decode(heatmap_logits, stride: int = 4, blur_sigma: float = DEFAULT_BLUR_SIGMA):
    """Heatmap logits -> keypoints in crop pixel coordinates with a confidence.

    Args:
      heatmap_logits: [B, h, w, K] (or [h, w, K]) float logits; dequantize int8 outputs first.
      stride: crop pixels per heatmap pixel.
      blur_sigma: smoothing before the sub-pixel step, in heatmap pixels (0: none).

    Returns:
      [B, K, 3] float32: x, y in crop coordinates (continuous: pixel i covers [i, i + 1)), and
      the confidence sigmoid(max logit).
    """
    logits = np.asarray(heatmap_logits, np.float32)
    if logits.ndim == 3:
        logits = logits[None]
    if logits.ndim != 4:
        raise ValueError(f"expected heatmap logits [B, h, w, K], got shape {logits.shape}")
    batch, h, w, num_keypoints = logits.shape
    maps = logits.transpose(0, 3, 1, 2).reshape(batch * num_keypoints, h, w).astype(np.float64)
    confidence = _sigmoid(maps.reshape(len(maps), -1).max(axis=1))
    smooth = _gaussian_blur(_sigmoid(maps), blur_sigma)
    flat = smooth.reshape(len(maps), -1).argmax(axis=1)
    iy, ix = np.divmod(flat, w)
    dx, dy = _newton_step(np.log(np.maximum(smooth, 1e-10)), ix, iy)
    x = (ix + dx + 0.5) * stride  # heatmap pixel j's centre is at (j + 0.5) * stride
    y = (iy + dy + 0.5) * stride
    keypoints = np.stack([x, y, confidence], axis=-1).reshape(batch, num_keypoints, 3)
    return keypoints.astype(np.float32)


def _newton_step(log_maps, ix, iy):
    """Offsets (dx, dy) of the mode from the integer maxima (ix, iy), from 3x3 differences.

    A maximum on the border is refined from the 3x3 window next to it (the logarithm of a
    Gaussian is a quadratic everywhere). Where the Hessian is not negative definite the offset
    is 0; it is clipped to +-1 pixel around the maximum.
    """
    n, h, w = log_maps.shape
    cx, cy = np.clip(ix, 1, w - 2), np.clip(iy, 1, h - 2)
    rows = np.arange(n)

    def at(oy, ox):
        return log_maps[rows, cy + oy, cx + ox]

    gx = 0.5 * (at(0, 1) - at(0, -1))
    gy = 0.5 * (at(1, 0) - at(-1, 0))
    hxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    hyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy**2
    ok = (hxx < 0) & (det > 1e-12) & (w > 2) & (h > 2)
    safe = np.where(ok, det, 1.0)
    dx = np.where(ok, cx - ix - (hyy * gx - hxy * gy) / safe, 0.0)
    dy = np.where(ok, cy - iy - (hxx * gy - hxy * gx) / safe, 0.0)
    return np.clip(dx, -1, 1), np.clip(dy, -1, 1)


def to_image(keypoints, crop_to_image) -> np.ndarray:
    """Maps [..., K, 3] crop keypoints to image coordinates, keeping the confidence.

    `crop_to_image` is the crop's 3x3 matrix, or a batch [B, 3, 3] for keypoints [B, K, 3].
    """
    keypoints = np.asarray(keypoints, np.float64)
    matrix = np.asarray(crop_to_image, np.float64)
    if matrix.ndim == 2:
        xy = crop_to_image_points(keypoints[..., :2], matrix)
    else:
        xy = np.stack([crop_to_image_points(k[..., :2], m) for k, m in zip(keypoints, matrix)])
    return np.concatenate([xy, keypoints[..., 2:]], axis=-1).astype(np.float32)


def to_coco_results(
    image_id,
    keypoints_image,
    category_id: int = 1,
    box_score: float = 1.0,
    score_threshold: float = SCORE_THRESHOLD,
) -> dict:
    """One person's COCO keypoint result record.

    `keypoints` is the flat [x1, y1, c1, x2, ...] list with each keypoint's confidence in the
    visibility slot (COCO evaluation ignores it). The person's `score` is the mean confidence of
    its keypoints above `score_threshold` (0 if none), times the box score, as in mmpose/HRNet.
    """
    keypoints = np.asarray(keypoints_image, np.float64).reshape(-1, 3)
    confidence = keypoints[:, 2]
    above = confidence > score_threshold
    score = float(confidence[above].mean()) if above.any() else 0.0
    return {
        "image_id": int(image_id),
        "category_id": int(category_id),
        "keypoints": [round(float(v), 3) for v in keypoints.reshape(-1)],
        "score": score * float(box_score),
    }
