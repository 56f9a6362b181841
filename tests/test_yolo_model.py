import math

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from tfqat.models.yolo import ACTIVATIONS, OUTPUT_NAMES, SIZES, STRIDES, build_yolo
from tfqat.tf_compat import keras

# All weights (count_params, incl. BN moving statistics) at 80 classes, reg_max 16. Trainable
# weights of "n": 3,157,184, Ultralytics' YOLOv8n (3,157,200) less its 16 fixed DFL weights.
PARAM_COUNTS = {"n": 3_167_776, "s": 11_186_576, "pico": 1_180_712, "femto": 609_512}

ALLOWED_LAYERS = {
    "InputLayer",
    "Conv2D",
    "BatchNormalization",
    "Activation",
    "ReLU",
    "MaxPooling2D",
    "UpSampling2D",
    "Concatenate",
    "Add",
}


def test_sizes_are_documented():
    assert set(PARAM_COUNTS) == set(SIZES)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_param_counts(size):
    model = build_yolo(80, size, (64, 64))
    assert model.count_params() == PARAM_COUNTS[size]
    if size == "n":
        assert 3.0e6 <= model.count_params() <= 3.3e6


def test_outputs_names_and_shapes():
    model = build_yolo(5, "pico", (64, 96), reg_max=8)
    assert tuple(model.output_names) == OUTPUT_NAMES
    heads = [model.get_layer(name) for name in OUTPUT_NAMES]
    assert all(type(layer) is keras.layers.Conv2D for layer in heads)
    outputs = model(np.random.uniform(0, 255, (2, 64, 96, 3)).astype("float32"))
    expected = []
    for s in STRIDES:
        expected += [(2, 64 // s, 96 // s, 32), (2, 64 // s, 96 // s, 5)]
    assert [tuple(o.shape) for o in outputs] == expected
    assert model.input.shape.as_list() == [None, 64, 96, 3]


def test_head_bias_init():
    model = build_yolo(80, "femto", (64, 64))
    for level, s in zip(("p3", "p4", "p5"), STRIDES):
        np.testing.assert_allclose(model.get_layer(f"box_{level}").bias.numpy(), 1.0)
        prior = math.log(5 / 80 / (640 / s) ** 2)
        np.testing.assert_allclose(model.get_layer(f"cls_{level}").bias.numpy(), prior, rtol=1e-6)


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="femto"):
        build_yolo(3, "xl")
    with pytest.raises(ValueError, match="relu6"):
        build_yolo(3, "n", activation="gelu")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_yolo(3, "n", input_size=(100, 100))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_only_quantizable_layers(activation):
    model = build_yolo(3, "femto", (64, 64), activation=activation)
    assert {layer.__class__.__name__ for layer in model.layers} <= ALLOWED_LAYERS
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def test_config_round_trip():
    model = build_yolo(4, "femto", (64, 64), activation="relu6")
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    for a, b in zip(model(images), clone(images)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    assert tuple(clone.output_names) == OUTPUT_NAMES


def _check_quantizes(size, activation):
    model = build_yolo(3, size, (64, 64), activation=activation)
    qat = tfmot.quantization.keras.quantize_model(model)
    outputs = qat(np.zeros((1, 64, 64, 3), np.float32), training=False)
    assert [tuple(o.shape)[1:] for o in outputs] == [tuple(o.shape)[1:] for o in model.outputs]
    # TF-MOT renames the outputs "quant_<name>" and keeps their order.
    assert tuple(qat.output_names) == tuple(f"quant_{n}" for n in OUTPUT_NAMES)


def test_quantize_femto_silu():
    _check_quantizes("femto", "silu")


@pytest.mark.slow
@pytest.mark.parametrize(
    "size, activation",
    [(s, a) for s in sorted(SIZES) for a in sorted(ACTIVATIONS) if (s, a) != ("femto", "silu")],
)
def test_quantize_every_size_and_activation(size, activation):
    _check_quantizes(size, activation)
