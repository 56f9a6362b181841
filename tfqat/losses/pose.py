"""Heatmap targets and loss of the top-down pose network, in TensorFlow.

Targets are unbiased Gaussians: each is centred at the keypoint's exact continuous position in
heatmap coordinates, so no quantisation to the heatmap grid happens at encoding time, and the
sub-pixel decoder in `tfqat.postprocess.pose` inverts it. Heatmap pixel j covers crop pixels
[j * stride, (j + 1) * stride), so its centre is at (j + 0.5) * stride in crop coordinates.
"""

from tfqat.losses.common import binary_entropy, global_batch_sum
from tfqat.tf_compat import tf

__all__ = ["DEFAULT_SIGMA", "PoseLoss", "encode_heatmaps", "heatmap_size"]

DEFAULT_SIGMA = 2.0  # heatmap pixels


def heatmap_size(input_size, stride: int):
    """(h, w) of the heatmaps of a model with input (height, width)."""
    height, width = input_size
    if height % stride or width % stride:
        raise ValueError(f"input size {tuple(input_size)} is not a multiple of stride {stride}")
    return height // stride, width // stride


def encode_heatmaps(keypoints, input_size, stride: int = 4, sigma: float = DEFAULT_SIGMA):
    """Gaussian heatmap targets and per-keypoint loss weights.

    Args:
      keypoints: [B, K, 3] (x, y, v) in crop pixel coordinates, as `pipeline.pose_dataset` gives.
      input_size: (height, width) of the crop.
      stride: crop pixels per heatmap pixel.
      sigma: Gaussian standard deviation in heatmap pixels.

    Returns:
      heatmaps [B, h, w, K] in [0, 1] (peak 1 at the exact keypoint position), and weights
      [B, K]: 1 for a labeled keypoint (v = 1 or 2) inside the crop, else 0 (its heatmap is 0).
    """
    height, width = input_size
    h, w = heatmap_size(input_size, stride)
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    weights = tf.cast((v > 0) & inside, tf.float32)
    u = x / stride - 0.5  # heatmap coordinates: pixel j's centre is at j
    t = y / stride - 0.5
    cols = tf.range(w, dtype=tf.float32)
    rows = tf.range(h, dtype=tf.float32)
    # Separable: exp(-(dx^2 + dy^2) / 2s^2) = gx * gy, [B, K, w] and [B, K, h].
    gx = tf.exp(-tf.square(cols - u[..., None]) / (2.0 * sigma**2))
    gy = tf.exp(-tf.square(rows - t[..., None]) / (2.0 * sigma**2))
    heatmaps = gy[..., :, None] * gx[..., None, :] * weights[..., None, None]  # [B, K, h, w]
    return tf.transpose(heatmaps, [0, 2, 3, 1]), weights


class PoseLoss:
    """Binary cross-entropy of heatmap logits against the Gaussian targets, per keypoint.

    The model's heatmap output is a logit per pixel; sigmoid(logit) estimates the Gaussian.
    Pixels near a keypoint (target above 0.1 of the peak, the core of the Gaussian) are weighted
    `positive_weight` times more than the background, which otherwise dominates a 17-channel map
    with a few dozen foreground pixels per channel. Channels whose keypoint is unlabeled or outside
    the crop carry no loss. The loss is summed over pixels and averaged over weighted keypoints,
    so its scale does not depend on the heatmap size. The targets' own entropy (the minimum of
    cross-entropy against a soft target) is subtracted: the loss is 0 for a perfect heatmap and
    the curve shows how far training is from it, with unchanged gradients.
    """

    def __init__(self, positive_weight: float = 4.0):
        self.positive_weight = float(positive_weight)

    def __call__(self, targets, outputs) -> dict:
        logits = _heatmap_logits(outputs)
        heatmaps, weights = targets["heatmaps"], targets["weights"]
        per_keypoint = self._per_keypoint(heatmaps, logits)
        keypoints = tf.maximum(global_batch_sum(tf.reduce_sum(weights)), 1.0)
        heatmap = tf.reduce_sum(per_keypoint * weights) / keypoints
        return {"heatmap": heatmap, "total": heatmap}

    def distillation(self, outputs, teacher_outputs):
        """How far `outputs` are from a teacher's on the same images (QAT's output distillation):
        the same loss with the teacher's heatmaps as targets, on every keypoint channel."""
        teacher = tf.stop_gradient(tf.sigmoid(_heatmap_logits(teacher_outputs)))
        per_keypoint = self._per_keypoint(teacher, _heatmap_logits(outputs))
        count = global_batch_sum(tf.cast(tf.size(per_keypoint), tf.float32))
        return tf.reduce_sum(per_keypoint) / count

    def _per_keypoint(self, heatmaps, logits):
        """[B, K] cross-entropy of logits to heatmaps over the pixels, minus the targets' entropy,
        foreground pixels (target > 0.1) weighted `positive_weight`."""
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=heatmaps, logits=logits)
        bce -= binary_entropy(heatmaps)
        pixel_weight = 1.0 + (self.positive_weight - 1.0) * tf.cast(heatmaps > 0.1, tf.float32)
        return tf.reduce_sum(bce * pixel_weight, axis=[1, 2])


def _heatmap_logits(outputs):
    """The model's heatmap logits (its only output, bare or in a list), as float32."""
    return tf.cast(outputs[0] if isinstance(outputs, (list, tuple)) else outputs, tf.float32)
