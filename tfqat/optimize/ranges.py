"""The ranges of a QAT model's quantizers: set from data before QAT (`calibrate`), read for
TensorBoard (`quantizer_ranges`)."""

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

from tfqat.tf_compat import keras

_q = tfmot.quantization.keras

_CALIBRATED = ("output", "post_activation")


def _range_variables(wrapper) -> dict[str, dict[str, object]]:
    """{"output": {"_min": var, "_max": var}, "kernel": {...}, ...} of a QuantizeWrapper."""
    found = {}
    for variable in wrapper.non_trainable_weights:
        # e.g. "quant_stem_conv/kernel_min:0", "quant_stem_act/output_max:0"
        short = variable.name.split("/")[-1].split(":")[0]
        for end in ("_min", "_max"):
            if short.endswith(end):
                found.setdefault(short[: -len(end)], {})[end] = variable
    return {k: v for k, v in found.items() if len(v) == 2}


def _output_in(model, layer_name):
    """The output of a layer in `model`'s own graph (a layer shared with another model, as after
    `strip_pruning`, has one output per graph)."""
    layer = model.get_layer(layer_name)
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001  (tf_keras Functional)
        for node in nodes:
            if node.layer is layer:
                return node.outputs
    raise ValueError(f"layer {layer_name!r} has no node in model {model.name!r}")


def calibrate(qat_model: keras.Model, float_model: keras.Model, images, batch_size: int = 8):
    """Sets the QAT model's quantizer ranges from data, before QAT starts.

    TF-MOT starts every activation range at [-6, 6] and moves it by an exponential moving
    average with decay 0.999 per training step, so after N steps the arbitrary start still
    weighs 0.999**N (0.55 after 600 steps): a short QAT stage clips wide tensors (logits) and
    wastes levels on narrow ones. This sets each activation range to the min/max (0 included)
    of the same tensor in `float_model` (the model `qat_model` was made from, same weights) over
    `images`, and each weight range from the current weights, as a training step would.
    The EMA then continues from there.

    Args:
      qat_model: the result of `quantize(float_model, ...)`.
      float_model: the float model; its layer names are the QAT wrappers' inner names.
      images: float32 array [N, H, W, 3] of pixels 0..255 (a few dozen training images).
    """
    images = np.asarray(images, np.float32)
    targets = []  # (range variables, float layer name)
    for layer in qat_model.layers:
        if not isinstance(layer, _q.QuantizeWrapper):
            continue
        for weight, quantizer, variables in layer._weight_vars:  # noqa: SLF001
            quantizer(weight, training=True, weights=variables)  # LastValueQuantizer assigns
        for tensor, variables in _range_variables(layer).items():
            if tensor in _CALIBRATED:
                targets.append((variables, layer.layer.name))
    if not targets:
        return
    names = sorted({name for _, name in targets})
    probe = keras.Model(float_model.inputs, [_output_in(float_model, n) for n in names])
    low = {n: 0.0 for n in names}
    high = {n: 0.0 for n in names}
    for start in range(0, len(images), batch_size):
        values = probe(images[start : start + batch_size], training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        for name, value in zip(names, values):
            low[name] = min(low[name], float(np.min(value)))
            high[name] = max(high[name], float(np.max(value)))
    for variables, name in targets:
        variables["_min"].assign(low[name])
        variables["_max"].assign(high[name])


# The names TensorBoard shows for TF-MOT's activation range variables.
_RANGE_NAMES = {"post_activation": "output", "pre_activation": "activation_input"}


def quantizer_ranges(qat_model: keras.Model) -> dict[str, tuple[float, float]]:
    """name -> (min, max) of every quantizer's range in a QAT model.

    Names are "<layer>/<quantized tensor>", e.g. "quant_stem_conv/kernel",
    "quant_stem_bn/output", "quant_stem_act/output", "quantize_image/input" (the QuantizeLayer
    after the input layer "image"). A per-channel weight quantizer reports the smallest min and
    the largest max over its channels. The fixed input quantizer reports INPUT_RANGE.
    """
    ranges = {}
    for layer in qat_model.layers:
        if isinstance(layer, _q.QuantizeWrapper):
            for tensor, variables in _range_variables(layer).items():
                tensor = _RANGE_NAMES.get(tensor, tensor)
                ranges[f"{layer.name}/{tensor}"] = (
                    float(np.min(variables["_min"].numpy())),
                    float(np.max(variables["_max"].numpy())),
                )
        elif isinstance(layer, quantize_layer.QuantizeLayer):
            quantizer = layer.quantizer
            if isinstance(quantizer, _q.quantizers.FixedQuantizer):
                ranges[f"{layer.name}/input"] = (
                    float(quantizer.init_min),
                    float(quantizer.init_max),
                )
            elif quantizer is not None:
                variables = layer.quantizer_vars
                ranges[f"{layer.name}/input"] = (
                    float(variables["min_var"].numpy()),
                    float(variables["max_var"].numpy()),
                )
    return ranges
