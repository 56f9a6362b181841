import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from ai_edge_litert.interpreter import Interpreter

from tfqat.models.pose import ACTIVATIONS, HEATMAP_STRIDE, OUTPUT_NAMES, SIZES, build_pose
from tfqat.tf_compat import keras, tf

INPUT = (64, 32)

ALLOWED_LAYERS = {
    "InputLayer",
    "Conv2D",
    "BatchNormalization",
    "Activation",
    "ReLU",
    "UpSampling2D",
    "Concatenate",
    "Add",
}

# All weights (count_params, incl. BN moving statistics) at 17 keypoints; documented in SIZES.
PARAM_COUNTS = {"n": 638_577, "s": 1_232_705, "m": 2_949_209}


def _images(batch=2, size=INPUT, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype(np.float32)


def test_sizes_are_documented():
    assert set(PARAM_COUNTS) == set(SIZES)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_output_shape_name_and_params(size):
    model = build_pose(17, INPUT, size)
    outputs = model(_images())
    assert tuple(outputs.shape) == (2, 64 // HEATMAP_STRIDE, 32 // HEATMAP_STRIDE, 17)
    assert tuple(model.output_names) == OUTPUT_NAMES
    assert type(model.get_layer("heatmaps")) is keras.layers.Conv2D
    assert model.count_params() == PARAM_COUNTS[size]


def test_heatmap_logits_start_at_the_background_prior():
    model = build_pose(5, INPUT, "n")
    np.testing.assert_allclose(model.get_layer("heatmaps").bias.numpy(), -4.0)


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="'m', 'n', 's'"):
        build_pose(17, INPUT, "xl")
    with pytest.raises(ValueError, match="relu6"):
        build_pose(17, INPUT, "s", activation="gelu")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_pose(17, (64, 48), "s")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_only_quantizable_layers(activation):
    model = build_pose(17, INPUT, "n", activation=activation)
    assert {layer.__class__.__name__ for layer in model.layers} <= ALLOWED_LAYERS
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def test_config_round_trip():
    model = build_pose(17, INPUT, "n")
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(model(_images()).numpy(), clone(_images()).numpy(), atol=1e-5)
    assert tuple(clone.output_names) == OUTPUT_NAMES


def _quantize(size):
    model = build_pose(17, INPUT, size)
    qat = tfmot.quantization.keras.quantize_model(model)
    outputs = qat(_images(1), training=False)
    assert tuple(outputs.shape) == tuple(model(_images(1)).shape)
    assert tuple(qat.output_names) == ("quant_heatmaps",)
    return qat


def test_quantize_model_n():
    _quantize("n")


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(set(SIZES) - {"n"}))
def test_quantize_model_every_size(size):
    _quantize(size)


@pytest.mark.slow
def test_full_int8_tflite_heatmaps_use_many_levels():
    """PITFALLS #8: the int8 heatmap output must not collapse onto a handful of levels.

    This network is untrained; the "s" model after 4 epochs on the synthetic set used 195
    levels on val crops, with the same OKS AP as the float model.
    """
    keras.utils.set_random_seed(0)
    qat = _quantize("n")
    images = [_images(4, seed=s) for s in range(4)]
    for batch in images:  # set the quantizer ranges, as QAT training does
        qat(batch, training=True)

    def representative():
        for batch in images:
            for image in batch:
                yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    scale, zero = inp["quantization"]
    levels = set()
    for image in images[0]:
        q = np.clip(np.round(image / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        levels |= set(np.unique(interpreter.get_tensor(out["index"])).tolist())
    assert len(levels) >= 32, len(levels)
