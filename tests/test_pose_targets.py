"""Heatmap targets, the pose loss and the numpy decoder: encode -> decode round trips."""

import subprocess
import sys

import numpy as np
import pytest

from tfqat.data.crop import crop_matrix, crop_to_image_points
from tfqat.losses.pose import PoseLoss, encode_heatmaps, heatmap_size
from tfqat.postprocess.pose import decode, to_coco_results, to_image
from tfqat.tf_compat import tf

INPUT = (64, 48)
STRIDE = 4


def _random_keypoints(rng, batch, k, input_size=INPUT, margin=0.0):
    height, width = input_size
    x = rng.uniform(margin, width - margin, (batch, k))
    y = rng.uniform(margin, height - margin, (batch, k))
    return np.stack([x, y, np.full((batch, k), 2.0)], axis=-1).astype(np.float32)


def _logits(heatmaps, eps=1e-4):
    """The logits of a perfect model: sigmoid(logits) equals the target."""
    p = np.clip(np.asarray(heatmaps, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p)).astype(np.float32)


def test_gaussian_is_centred_on_the_heatmap_pixel_centre():
    # Heatmap pixel (row 3, col 5) has its centre at crop (22, 14) with stride 4.
    keypoints = np.array([[[5.5 * STRIDE, 3.5 * STRIDE, 2]]], np.float32)
    heatmaps, weights = encode_heatmaps(keypoints, INPUT, STRIDE, sigma=2.0)
    heatmaps = heatmaps.numpy()
    assert heatmaps.shape == (1, 16, 12, 1) and weights.numpy().tolist() == [[1.0]]
    assert heatmaps[0, 3, 5, 0] == pytest.approx(1.0)
    assert heatmaps[0, 3, 7, 0] == pytest.approx(np.exp(-4 / 8), rel=1e-5)
    np.testing.assert_allclose(heatmaps[0, :, :, 0], heatmaps[0, ::-1, :, 0][::-1], atol=1e-7)


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_encode_decode_recovers_sub_pixel_positions(sigma):
    keypoints = _random_keypoints(np.random.default_rng(0), 16, 17)
    heatmaps, _ = encode_heatmaps(keypoints, INPUT, STRIDE, sigma)
    decoded = decode(_logits(heatmaps.numpy()), STRIDE, blur_sigma=0.0)
    error = np.abs(decoded[..., :2] - keypoints[..., :2]) / STRIDE  # heatmap pixels
    assert error.max() < 0.05, error.max()


def test_decode_survives_int8_logits():
    """256 levels over the logits' range (what an int8 output gives) keep sub-pixel accuracy."""
    keypoints = _random_keypoints(np.random.default_rng(1), 16, 17)
    logits = _logits(encode_heatmaps(keypoints, INPUT, STRIDE, 2.0)[0].numpy())
    low, high = logits.min(), logits.max()
    scale = (high - low) / 255
    quantized = np.round((logits - low) / scale) * scale + low
    decoded = decode(quantized, STRIDE, blur_sigma=0.0)
    error = np.abs(decoded[..., :2] - keypoints[..., :2]) / STRIDE
    assert error.max() < 0.25 and error.mean() < 0.05, (error.max(), error.mean())


def test_smoothed_decode_is_sub_pixel_away_from_the_border():
    keypoints = _random_keypoints(np.random.default_rng(2), 8, 17, margin=3 * STRIDE)
    logits = _logits(encode_heatmaps(keypoints, INPUT, STRIDE, 2.0)[0].numpy())
    decoded = decode(logits, STRIDE, blur_sigma=1.0)
    assert (np.abs(decoded[..., :2] - keypoints[..., :2]) / STRIDE).max() < 0.25


def test_confidence_is_sigmoid_of_the_peak_logit():
    logits = np.full((1, 16, 12, 2), -6.0, np.float32)
    logits[0, 4, 5, 0] = 1.5
    logits[0, 10, 2, 1] = -1.0
    decoded = decode(logits, STRIDE)
    np.testing.assert_allclose(decoded[0, :, 2], 1 / (1 + np.exp([-1.5, 1.0])), rtol=1e-6)
    np.testing.assert_allclose(
        decoded[0, 0, :2], [(5 + 0.5) * STRIDE, (4 + 0.5) * STRIDE], atol=1.0
    )


def test_unlabeled_and_outside_keypoints_have_no_weight():
    height, width = INPUT
    keypoints = np.array(
        [
            [
                [10, 10, 2],
                [10, 10, 1],
                [10, 10, 0],
                [-1, 10, 2],
                [10, height, 2],
                [width - 0.01, 0, 1],
            ]
        ],
        np.float32,
    )
    heatmaps, weights = encode_heatmaps(keypoints, INPUT, STRIDE, 2.0)
    assert weights.numpy().tolist() == [[1, 1, 0, 0, 0, 1]]
    assert np.all(heatmaps.numpy()[..., 2:5] == 0)


def test_unlabeled_keypoints_carry_no_loss_or_gradient():
    keypoints = _random_keypoints(np.random.default_rng(3), 2, 4)
    keypoints[0, 1, 2] = 0  # unlabeled
    keypoints[1, 3, :2] = [-20.0, 5.0]  # left the crop
    heatmaps, weights = encode_heatmaps(keypoints, INPUT, STRIDE, 2.0)
    targets = {"heatmaps": heatmaps, "weights": weights}
    logits = tf.Variable(tf.random.normal((2, *heatmap_size(INPUT, STRIDE), 4)))
    loss = PoseLoss()
    with tf.GradientTape() as tape:
        value = loss(targets, logits)["total"]
    grad = tape.gradient(value, logits).numpy()
    assert np.all(grad[0, ..., 1] == 0) and np.all(grad[1, ..., 3] == 0)
    assert np.abs(grad[0, ..., 0]).sum() > 0
    changed = logits.numpy()
    changed[0, ..., 1] += 5.0
    changed[1, ..., 3] -= 5.0
    assert float(loss(targets, tf.constant(changed))["total"]) == pytest.approx(float(value))


def test_loss_is_lowest_at_the_target():
    keypoints = _random_keypoints(np.random.default_rng(4), 2, 3)
    heatmaps, weights = encode_heatmaps(keypoints, INPUT, STRIDE, 2.0)
    targets = {"heatmaps": heatmaps, "weights": weights}
    perfect = PoseLoss()(targets, tf.constant(_logits(heatmaps.numpy(), 1e-6)))
    shifted = PoseLoss()(targets, tf.constant(_logits(np.roll(heatmaps.numpy(), 1, axis=2), 1e-6)))
    assert set(perfect) == {"heatmap", "total"}
    # The targets' own entropy is subtracted: a perfect heatmap costs nothing.
    assert float(perfect["total"]) == pytest.approx(0.0, abs=1e-3)
    assert float(perfect["total"]) < float(shifted["total"])


def test_to_image_and_coco_record():
    matrix = crop_matrix((30, 40, 50, 90), INPUT, angle_deg=20, flip=True)
    crop = np.array([[[10.0, 20.0, 0.9], [30.0, 5.0, 0.1], [0.0, 0.0, 0.5]]], np.float32)
    image = to_image(crop, matrix[None])
    np.testing.assert_allclose(
        image[0, :, :2], crop_to_image_points(crop[0, :, :2], matrix), rtol=1e-5
    )
    np.testing.assert_allclose(image[..., 2], crop[..., 2])
    np.testing.assert_allclose(to_image(crop[0], matrix), image[0])
    record = to_coco_results(7, image[0], category_id=1, box_score=0.5)
    assert record["image_id"] == 7 and record["category_id"] == 1
    assert len(record["keypoints"]) == 9
    assert record["score"] == pytest.approx((0.9 + 0.5) / 2 * 0.5)
    assert to_coco_results(7, np.zeros((17, 3)))["score"] == 0.0
    assert len(to_coco_results(7, np.zeros((17, 3)))["keypoints"]) == 51


def test_postprocess_imports_without_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import numpy as np\n"
        "from tfqat.postprocess import pose\n"
        "k = pose.decode(np.zeros((1, 8, 6, 17), np.float32))\n"
        "assert k.shape == (1, 17, 3)\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
