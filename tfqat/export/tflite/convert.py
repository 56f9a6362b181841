"""Keras model -> .tflite bytes (fully int8 or float32). Imports TensorFlow.

The model is traced once into a concrete function of a fixed [1, H, W, 3] float32 input and
converted from that frozen graph. Handing the converter the Keras model (`from_keras_model`) or
the model as the concrete function's trackable object makes it export a SavedModel first, which
traces every layer: on the femto detector that took 23-125 s against 3.4 s here.

The converted file's input is renamed "image", its outputs get the model's output names (TF-MOT's
"quant_" prefix removed), in the Keras model's order, and a "serving_default" signature lists
them (see `tfqat.export.tflite.flatbuffer.set_io_names`).
"""

import warnings

import numpy as np

from tfqat.export.tflite.flatbuffer import set_io_names
from tfqat.runtime.tflite import strip_quant_prefix
from tfqat.tf_compat import keras, tf

__all__ = ["convert_float32", "convert_int8"]

_INPUT_NAME = "image"


def _head_names(model: keras.Model) -> list[str]:
    return [strip_quant_prefix(n) for n in model.output_names]


def _concrete_function(model: keras.Model):
    (model_input,) = model.inputs
    spec = tf.TensorSpec([1, *model_input.shape[1:]], tf.float32, name=_INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image):
        outputs = model(image, training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return serve.get_concrete_function()


def _single_images(representative_images):
    """Yields float32 [1, H, W, 3] arrays from batches, single images or [1, H, W, 3] arrays."""
    for batch in representative_images:
        batch = np.asarray(batch, np.float32)
        for image in batch if batch.ndim == 4 else batch[None]:
            yield image[None]


def _with_extreme_pixels(images):
    """The images, then a copy of the first with one pixel 0 and one 255 in every channel.

    A post-training-quantized file takes its input range from the calibration images; this makes
    it exactly [0, 255] (scale 1.0, zero point -128) whatever the images. A QAT model's input
    quantizer is fixed to that range already.
    """
    first = None
    for image in images:
        if first is None:
            first = image.copy()
        yield [image]
    if first is None:
        raise ValueError("representative_images is empty")
    first[0, 0, 0, :] = 0.0
    first[0, 0, -1, :] = 255.0
    yield [first]


def _convert(
    model,
    representative_images=None,
    *,
    quantize=True,
    output_type="int8",
    supported_ops=("TFLITE_BUILTINS_INT8",),
) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(model)])
    if quantize:
        if representative_images is None:
            raise ValueError("int8 conversion needs representative images (also for QAT models)")
        images = _with_extreme_pixels(_single_images(representative_images))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: images
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, s) for s in supported_ops]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = getattr(tf, output_type)
    with warnings.catch_warnings():
        # The frozen-graph path asks for input statistics the representative data provides.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        data = converter.convert()
    return set_io_names(data, [_INPUT_NAME], _head_names(model))


def convert_int8(keras_model: keras.Model, representative_images) -> bytes:
    """Fully-integer .tflite of a QAT model (ranges from its quantizers) or a float one (PTQ).

    Optimize.DEFAULT, TFLITE_BUILTINS_INT8 only, int8 input and outputs. The representative
    images (float32 pixels 0..255; an iterable of [1, H, W, 3] or [B, H, W, 3] arrays, iterated
    once) calibrate what the QAT quantizers do not cover, or everything for PTQ. The input
    quantization comes out as scale 1.0, zero point -128; `validate.validate_int8`
    checks that and the rest.
    """
    return _convert(keras_model, representative_images, quantize=True)


def convert_float32(keras_model: keras.Model) -> bytes:
    """Float32 .tflite of a float model, same input/output naming as `convert_int8`."""
    return _convert(keras_model, quantize=False)
