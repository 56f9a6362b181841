"""Quantization-aware training: float tf_keras model -> TF-MOT QAT model.

`quantize(model)` checks that every layer has a quantize config (TF-MOT's 8-bit scheme or
`QUANTIZE_CONFIGS` below), annotates, and applies the scheme. Two things differ from
`tfmot.quantization.keras.quantize_model`:

* The input quantizer is fixed to [0, 255] (`INPUT_RANGE`), because every tfqat model takes raw
  pixels 0..255. The int8 file then always has input scale 1.0 and zero point -128, i.e.
  int8 = pixel - 128, whatever the training images' extremes were. TF-MOT's own input quantizer
  tracks the min/max of every batch seen, which depends on the data.
* A layer TF-MOT cannot quantize is named before anything is built (`check_quantizable`),
  instead of surfacing as a RuntimeError deep in cloning, or (for `Lambda`) as a silent float op.

A QAT model is saved and restored like any other through `tf.train.Checkpoint` (what
`tfqat.training.fit` does) into a model rebuilt with `quantize(build_float_model(), scheme)`.
`model.save` / `load_qat_model` also work for the default scheme (not for "prune_preserve":
TF-MOT does not serialize its sparsity-preserving weight quantizers).
"""

import numpy as np
import tensorflow_model_optimization as tfmot

# Not exported by TF-MOT's public API; both are registered in its `quantize_scope`.
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs as _configs,
    default_8bit_quantize_registry as _registry,
)

from tfqat.tf_compat import keras

__all__ = [
    "INPUT_RANGE",
    "QUANTIZE_CONFIGS",
    "SCHEMES",
    "check_quantizable",
    "load_qat_model",
    "qat_scope",
    "quantize",
    "quantizer_ranges",
]

_q = tfmot.quantization.keras
_transforms = _q.default_8bit.default_8bit_transforms
layers = keras.layers

# Every tfqat model takes float32 pixels 0..255: the int8 input is pixel - 128 (scale 1, zp -128).
INPUT_RANGE = (0.0, 255.0)


# === Layer support ===

def _output_only_config():
    # Quantizes the layer's output only, as TF-MOT does for a BatchNormalization it folds behind
    # a Conv2D. For a BatchNormalization TF-MOT cannot fold (e.g. after a Conv2DTranspose).
    return _configs.Default8BitOutputQuantizeConfig()


def _conv_transpose_config():
    # The default scheme's own config for Conv2DTranspose (per-tensor weights). The
    # prune-preserve registry has none; tfqat never prunes transposed convolutions.
    return _registry.Default8BitConvTransposeQuantizeConfig(["kernel"], ["activation"], False)


# Layer class -> factory of a QuantizeConfig, for the layer types tfqat models use that a scheme's
# registry lacks. Factories, not instances: TF-MOT's Concatenate transform mutates the config of
# each layer feeding a Concatenate. A scheme's own registry takes precedence.
QUANTIZE_CONFIGS = {
    layers.BatchNormalization: _output_only_config,
    layers.Conv2DTranspose: _conv_transpose_config,
}

# Activations TF-MOT's QuantizeAwareActivation / Activation config know how to quantize.
_SUPPORTED_ACTIVATIONS = {"linear", "relu", "relu6", "swish", "gelu", "softmax", "sigmoid", "tanh"}


class _FixedInputQuantize(_transforms.InputLayerQuantize):
    """InputLayer -> InputLayer + QuantizeLayer with the fixed range INPUT_RANGE."""

    def replacement(self, match_layer):
        node = super().replacement(match_layer)
        quantizer = _q.quantizers.FixedQuantizer(
            num_bits=8, init_min=INPUT_RANGE[0], init_max=INPUT_RANGE[1], narrow_range=False
        )
        node.layer["config"]["quantizer"] = keras.utils.legacy.serialize_keras_object(quantizer)
        return node


class _LayoutTransform(_q.default_8bit.Default8BitQuantizeLayoutTransform):
    """TF-MOT 0.8.1's default 8-bit layout transforms, with the fixed-range input quantizer."""

    def apply(self, model, layer_quantize_map):
        transforms = [
            _FixedInputQuantize(),
            _transforms.SeparableConv1DQuantize(),
            _transforms.SeparableConvQuantize(),
            _transforms.Conv2DReshapeBatchNormReLUQuantize(),
            _transforms.Conv2DReshapeBatchNormActivationQuantize(),
            _transforms.Conv2DBatchNormReLUQuantize(),
            _transforms.Conv2DBatchNormActivationQuantize(),
            _transforms.Conv2DReshapeBatchNormQuantize(),
            _transforms.Conv2DBatchNormQuantize(),
            _transforms.ConcatTransform6Inputs(),
            _transforms.ConcatTransform5Inputs(),
            _transforms.ConcatTransform4Inputs(),
            _transforms.ConcatTransform3Inputs(),
            _transforms.ConcatTransform(),
            _transforms.DenseBatchNormQuantize(),
            _transforms.DenseBatchNormReLUQuantize(),
            _transforms.DenseBatchNormActivationQuantize(),
            _transforms.LayerReLUQuantize(),
            _transforms.LayerReluActivationQuantize(),
        ]
        return _q.graph_transformations.model_transformer.ModelTransformer(
            model, transforms, set(layer_quantize_map), layer_quantize_map
        ).transform()


class _DefaultScheme(_q.default_8bit.Default8BitQuantizeScheme):
    def get_layout_transformer(self):
        return _LayoutTransform()


class _PrunePreserveScheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
    def get_layout_transformer(self):
        return _LayoutTransform()


SCHEMES = {"default": _DefaultScheme, "prune_preserve": _PrunePreserveScheme}


def _make_scheme(scheme: str):
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; valid choices: {sorted(SCHEMES)}")
    return SCHEMES[scheme]()


def _inbound_layers(layer) -> list:
    found = []
    for node in layer._inbound_nodes:  # noqa: SLF001  (tf_keras has no public accessor)
        inbound = node.inbound_layers
        found += inbound if isinstance(inbound, list) else [inbound]
    return found


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", activation.__class__.__name__)


def _folded_by_scheme(layer) -> bool:
    """A BatchNormalization TF-MOT folds into the Conv2D/DepthwiseConv2D right before it."""
    if not isinstance(layer, layers.BatchNormalization):
        return False
    inbound = _inbound_layers(layer)
    return (
        len(inbound) == 1
        and type(inbound[0]) in (layers.Conv2D, layers.DepthwiseConv2D)
        and _activation_name(inbound[0]) == "linear"
        and len(inbound[0]._outbound_nodes) == 1  # noqa: SLF001
    )


def _why_unsupported(layer, registry) -> str | None:
    """None if `layer` can be quantized under `registry` (+ QUANTIZE_CONFIGS), else the reason."""
    if isinstance(layer, layers.InputLayer) or _folded_by_scheme(layer):
        return None
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or "PruneLowMagnitude" in type(
        layer
    ).__name__:
        return "pruning wrapper: call tfqat.optimize.prune.strip(model) first"
    if not registry.supports(layer) and type(layer) not in QUANTIZE_CONFIGS:
        return "no QuantizeConfig"
    activation = _activation_name(layer)
    if activation is not None and activation not in _SUPPORTED_ACTIVATIONS:
        return f"activation {activation!r} cannot be quantized"
    return None


def check_quantizable(model: keras.Model, scheme: str = "default"):
    """Raises ValueError naming every layer `quantize(model, scheme)` could not quantize."""
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"{model.name}: only functional/Sequential tf_keras models can be quantized"
        )
    registry = _make_scheme(scheme).get_quantize_registry()
    problems = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            problems.append(f"{layer.name} ({type(layer).__name__}): nested model")
            continue
        reason = _why_unsupported(layer, registry)
        if reason:
            problems.append(f"{layer.name} ({type(layer).__name__}): {reason}")
    if problems:
        raise ValueError(
            f"{len(problems)} layer(s) of model {model.name!r} cannot be quantized with the "
            f"{scheme!r} scheme (add a QuantizeConfig to tfqat.optimize.qat.QUANTIZE_CONFIGS or "
            "use supported layers):\n  " + "\n  ".join(problems)
        )


def qat_scope(*custom_objects):
    """`quantize_scope` for cloning, saving and loading tfqat QAT models."""
    return _q.quantize_scope(*custom_objects)


def quantize(model: keras.Model, scheme: str = "default") -> keras.Model:
    """Returns the QAT version of a float model (a new model; `model` is left as it is).

    Args:
      model: a flat functional tf_keras model (for "prune_preserve": pruned and stripped).
      scheme: "default" (TF-MOT's 8-bit scheme, per-channel conv weights) or "prune_preserve"
        (the same, with weight quantizers that keep a pruned kernel's zeros at zero).

    The layer names gain TF-MOT's "quant_" prefix (outputs "quant_box_p3", ...). The quantizer
    ranges are still empty: run at least one training step (or a calibration pass with
    `training=True`) before converting.
    """
    quantize_scheme = _make_scheme(scheme)
    check_quantizable(model, scheme)
    registry = quantize_scheme.get_quantize_registry()

    def annotate(layer):
        if isinstance(layer, layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        config = None
        if not registry.supports(layer) and not _folded_by_scheme(layer):
            config = QUANTIZE_CONFIGS[type(layer)]()
        return _q.quantize_annotate_layer(layer, quantize_config=config)

    with qat_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
        return _q.quantize_apply(annotated, quantize_scheme)


def load_qat_model(path: str, custom_objects=None) -> keras.Model:
    """Loads a QAT model written by `model.save` (.h5 or .keras), default scheme only."""
    with qat_scope(custom_objects or {}):
        return keras.models.load_model(path, compile=False)


# === Quantizer ranges (TensorBoard) ===

def quantizer_ranges(qat_model: keras.Model) -> dict[str, tuple[float, float]]:
    """name -> (min, max) of every quantizer's range in a QAT model.

    Names are "<layer>/<quantized tensor>", e.g. "quant_stem_conv/kernel",
    "quant_stem_bn/output", "quant_stem_act/output", "quantize_layer/input". A per-channel
    weight quantizer reports the smallest min and the largest max over its channels. The fixed
    input quantizer reports INPUT_RANGE.
    """
    ranges = {}
    for layer in qat_model.layers:
        if isinstance(layer, _q.QuantizeWrapper):
            found = {}
            for variable in layer.non_trainable_weights:
                # e.g. "quant_stem_conv/kernel_min:0", "quant_stem_act/post_activation_max:0"
                short = variable.name.split("/")[-1].split(":")[0]
                for end in ("_min", "_max"):
                    if short.endswith(end):
                        found.setdefault(short[: -len(end)], {})[end] = variable.numpy()
            for tensor, bounds in found.items():
                if len(bounds) == 2:
                    tensor = {"post_activation": "output", "pre_activation": "activation_input"}.get(
                        tensor, tensor
                    )
                    ranges[f"{layer.name}/{tensor}"] = (
                        float(np.min(bounds["_min"])),
                        float(np.max(bounds["_max"])),
                    )
        elif isinstance(layer, quantize_layer.QuantizeLayer):
            quantizer = layer.quantizer
            if isinstance(quantizer, _q.quantizers.FixedQuantizer):
                ranges[f"{layer.name}/input"] = (float(quantizer.init_min), float(quantizer.init_max))
            elif quantizer is not None:
                variables = layer.quantizer_vars
                ranges[f"{layer.name}/input"] = (
                    float(variables["min_var"].numpy()),
                    float(variables["max_var"].numpy()),
                )
    return ranges
