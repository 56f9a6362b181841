"""Pruning in a custom loop: target reached, exclusions, strip, 2:4, zeros kept through PQAT."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import init_batchnorm, small_detector, textured_images

from tfqat.export.tflite.convert import convert_int8
from tfqat.export.tflite.flatbuffer import tflite_kernel_sparsity, tflite_sparsity_by_layer
from tfqat.export.tflite.validate import validate_int8
from tfqat.models.yolo import build_yolo
from tfqat.optimize import prune, qat, ranges
from tfqat.tf_compat import keras, tf

PRUNED_IN_SMALL = {
    "down_conv",
    "c2f_cv1a_conv",
    "c2f_cv1b_conv",
    "c2f_m0_cv1_conv",
    "c2f_m0_cv2_conv",
    "c2f_cv2_conv",
    "sppf_cv1_conv",
    "sppf_cv2_conv",
    "side_conv",
    "box_cv_conv",
    "cls_cv_conv",
}
EXCLUDED_IN_SMALL = {"stem_conv", "box_p3", "cls_p3"}


def train_steps(model, images, steps, learning_rate=1e-3):
    """A custom loop like tfqat.training.fit's: tf.function step, model(x, training=True)."""
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in model(x, training=True)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for _ in range(steps):
        step(images)


def pruned_small(images, **kwargs):
    """Small detector pruned to 50 % (constant schedule, every step) by 2 training steps."""
    model = small_detector()
    init_batchnorm(model, images)
    pruned = prune.prune(model, 0.5, 0, -1, schedule="constant", frequency=1, **kwargs)
    prune.start_pruning(pruned)
    train_steps(pruned, images, 2)
    return pruned


@pytest.fixture(scope="module")
def pruned():
    """(pruned model with masks applied, the error check_sparsity raised before apply_masks)."""
    model = pruned_small(textured_images(8))
    with pytest.raises(prune.PruningTargetNotReached) as unmasked:
        prune.check_sparsity(model, 0.5)
    prune.apply_masks(model)
    return model, str(unmasked.value)


@pytest.mark.slow
def test_default_exclusions_on_the_detector():
    model = build_yolo(3, "femto", (64, 64), "relu6")
    convs = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    pruned = prune.prune(model, 0.5, 0, 100, frequency=10)
    excluded = convs - set(prune.pruned_layer_names(pruned))
    assert excluded == {"stem_conv", "box_p3", "cls_p3", "box_p4", "cls_p4", "box_p5", "cls_p5"}
    images = textured_images(2)
    for a, b in zip(model(images), pruned(images)):  # same weights before any step
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_constant_sparsity_reaches_target_in_custom_loop(pruned):
    pruned, unmasked_error = pruned
    assert set(prune.pruned_layer_names(pruned)) == PRUNED_IN_SMALL
    # The optimizer's update after the last mask makes masked weights non-zero again.
    assert "down_conv" in unmasked_error
    report = prune.check_sparsity(pruned, 0.5)
    assert set(report) == PRUNED_IN_SMALL
    assert all(abs(v - 0.5) < 0.01 for v in report.values())
    with pytest.raises(prune.PruningTargetNotReached, match="0.8"):
        prune.check_sparsity(pruned, 0.8)

    stripped = prune.strip(pruned)
    assert not any("PruneLowMagnitude" in type(layer).__name__ for layer in stripped.layers)
    assert {type(layer).__name__ for layer in stripped.layers} <= {
        "InputLayer",
        "Conv2D",
        "BatchNormalization",
        "ReLU",
        "MaxPooling2D",
        "UpSampling2D",
        "Concatenate",
        "Add",
    }
    sparsity = prune.sparsity_report(stripped)
    assert all(sparsity[name] == 0.0 for name in EXCLUDED_IN_SMALL)
    assert all(sparsity[name] >= 0.49 for name in PRUNED_IN_SMALL)
    prune.check_sparsity(stripped, 0.5)  # the stripped model is checked by the exclude rule
    assert 0.4 < prune.model_kernel_sparsity(stripped) < 0.5


def test_ema_copy_gets_the_trained_masks(pruned):
    pruned, _ = pruned
    ema = keras.models.clone_model(pruned)
    # An EMA of weights and 0/1 masks is neither sparse nor a mask.
    ema.set_weights([0.5 * w + 0.25 for w in pruned.get_weights()])
    with pytest.raises(prune.PruningTargetNotReached):
        prune.check_sparsity(ema, 0.5)
    prune.apply_masks(ema, masks_from=pruned)
    prune.check_sparsity(ema, 0.5)


def test_schedule_arguments_are_checked():
    model = small_detector()
    with pytest.raises(ValueError, match="multiple of frequency"):
        prune.prune(model, 0.5, 0, 150, frequency=100)
    with pytest.raises(ValueError, match="valid choices"):
        prune.prune(model, 0.5, 0, 100, schedule="cubic")
    with pytest.raises(ValueError, match="2/4"):
        prune.prune(model, 0.6, 0, 100, m_by_n=(2, 4))
    with pytest.raises(ValueError, match="2-D kernels only"):
        prune.prune(model, 0.5, 0, 100, block_size=(1, 4))


def test_two_of_four_along_input_channels():
    pruned = pruned_small(textured_images(4), m_by_n=(2, 4))
    prune.apply_masks(pruned)
    stripped = prune.strip(pruned)
    for name in PRUNED_IN_SMALL:
        kernel = stripped.get_layer(name).kernel.numpy()  # [h, w, in, out]
        rows = np.transpose(kernel, (3, 0, 1, 2)).reshape(-1, kernel.shape[2])
        rows = np.pad(rows, ((0, 0), (0, -rows.shape[1] % 4)))  # 3 input channels: 1 padded
        zeros_per_group = (rows.reshape(rows.shape[0], -1, 4) == 0).sum(-1)
        assert zeros_per_group.min() >= 2, name
    prune.check_sparsity(stripped, 0.5, m_by_n=(2, 4))
    # a dense model fails the pattern check, naming the layer
    with pytest.raises(prune.PruningTargetNotReached, match="groups of 4"):
        prune.check_sparsity(small_detector(), 0.0, m_by_n=(2, 4))


def test_prune_preserving_qat_keeps_zeros_in_the_int8_file(pruned, tmp_path):
    images = textured_images(8)
    sparse = prune.strip(pruned[0])

    # Plain QAT training moves the zeros; prune-preserving QAT keeps them.
    plain = qat.quantize(sparse)
    train_steps(plain, images, 2)
    assert prune.model_kernel_sparsity(plain, PRUNED_IN_SMALL) < 0.1

    qat_model = qat.quantize(sparse, "prune_preserve")
    train_steps(qat_model, images, 2)
    ranges.calibrate(qat_model, sparse, images)
    assert prune.model_kernel_sparsity(qat_model, PRUNED_IN_SMALL) == pytest.approx(0.5, abs=0.01)
    data = convert_int8(qat_model, images)
    validate_int8(data, images, score_output_names=("cls_p3",))
    sparsity = tflite_sparsity_by_layer(data)
    assert tflite_kernel_sparsity(data) == sparsity["total"] > 0.4
    weights = sparsity["layers"]
    for name in PRUNED_IN_SMALL:
        (tensor,) = [t for t in weights if f"quant_{name}/" in t]
        assert weights[tensor] >= 0.49, (name, tensor, weights[tensor])
    for name in EXCLUDED_IN_SMALL:
        (tensor,) = [t for t in weights if f"quant_{name}/" in t]
        assert weights[tensor] < 0.05, (name, tensor, weights[tensor])

    # tools/compare_pruned.py on the PQAT file against the same detector quantized unpruned.
    dense_float = small_detector()
    init_batchnorm(dense_float, images)
    dense = qat.quantize(dense_float)
    ranges.calibrate(dense, dense_float, images)
    (tmp_path / "pruned.tflite").write_bytes(data)
    (tmp_path / "dense.tflite").write_bytes(convert_int8(dense, images))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    printed = subprocess.run(
        [
            sys.executable,
            os.path.join(repo, "tools", "compare_pruned.py"),
            f"--pruned={tmp_path / 'pruned.tflite'}",
            f"--dense={tmp_path / 'dense.tflite'}",
            "--exclude=^stem,^box_p3$,^cls_p3$",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=repo,
    ).stdout
    zeros = float(re.search(r"weights, ([0-9.]+) exact zeros", printed).group(1))
    assert zeros == pytest.approx(0.5, abs=0.01), printed
    pruned_bits, dense_bits = map(
        float,
        re.search(r"pruned ([0-9.]+) bits/weight, dense ([0-9.]+) bits/weight", printed).groups(),
    )
    assert pruned_bits < dense_bits - 1, printed
    assert "gzip -9: pruned" in printed
