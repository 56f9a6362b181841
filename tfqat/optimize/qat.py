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
* A Conv2D/Dense followed directly by ReLU keeps its weight quantizer (TF-MOT 0.8.1 drops it,
  so that kernel would train in float and be quantized only by the converter).

`tfqat.optimize.ranges.calibrate` sets the ranges from data before QAT starts; TF-MOT's start
at [-6, 6].

Saving: a QAT model is saved and restored like any other through `tf.train.Checkpoint` (what
`tfqat.train.loop.fit` does) into a model rebuilt with `quantize(float_model, scheme)`; outputs
are identical. For "prune_preserve", rebuild from the pruned float weights (not from a fresh
model): TF-MOT takes the zero mask from the weights at `quantize` time, as a constant.
`model.save("x.h5")` + `load_qat_model` also round-trip exactly, but a reloaded
"prune_preserve" model has plain weight quantizers (fine for export, not for more training).
Likewise a cloned or reloaded model has TF-MOT's moving-average activation quantizers, whatever
`activation_quantizer` made it: the range variables and the inference graph are the same.
The Keras v3 ".keras" format fails in TF-MOT 0.8.1 ("expected 4 variables, but received 5").
"""

import tensorflow_model_optimization as tfmot

# Not (all) exported by TF-MOT's public API; the configs are registered in its `quantize_scope`.
from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_aware_activation,
)
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs as _configs,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as _registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_transforms as _transforms,
)

from tfqat.optimize.qat_schedule import check_activation_quantizer, install_activation_quantizers
from tfqat.tf_compat import keras

__all__ = [
    "INPUT_RANGE",
    "QUANTIZE_CONFIGS",
    "QUANTIZER_GROUPS",
    "SCHEMES",
    "check_quantizable",
    "load_qat_model",
    "qat_scope",
    "quantize",
    "switch_off_quantizers",
]

_q = tfmot.quantization.keras
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
        # A stable name ("quantize_image"), not a per-session unique "quantize_layer_<n>".
        name = f"quantize_{match_layer.layer['config']['name']}"
        node.layer["config"]["name"] = node.layer["name"] = name
        return node


class _LayerReLUQuantize(_transforms.LayerReLUQuantize):
    """TF-MOT's Conv2D/Dense -> ReLU fusion without its bug.

    TF-MOT gives the Conv2D/DepthwiseConv2D/Dense a NoOpQuantizeConfig, which also drops its
    weight quantizer: the kernel is then trained in float and quantized only by the converter.
    Here the layer keeps its config (weights quantized) and only its output fake-quant goes
    (NoOpActivation), as TF-MOT's own Conv2D + BatchNormalization + ReLU transform does.
    """

    def replacement(self, match_layer):
        feeding = match_layer.input_layers[0]
        if feeding.layer["class_name"] == "Add":
            return super().replacement(match_layer)
        if feeding.layer["config"].get("activation") != "linear":
            return match_layer  # an activation of its own: keep both fake-quants
        feeding.layer["config"]["activation"] = quantize_utils.serialize_activation(
            quantize_aware_activation.NoOpActivation(), use_legacy_format=True
        )
        return match_layer


class _LayerReluActivationQuantize(_LayerReLUQuantize):
    def pattern(self):
        return _transforms.LayerReluActivationQuantize().pattern()


class _LayoutTransform(_q.default_8bit.Default8BitQuantizeLayoutTransform):
    """TF-MOT 0.8.1's default 8-bit layout transforms, with the fixed-range input quantizer
    and the fixed Conv2D/Dense -> ReLU fusion."""

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
            _LayerReLUQuantize(),
            _LayerReluActivationQuantize(),
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
        raise ValueError(
            f"unknown quantization scheme {scheme!r}; valid choices: {sorted(SCHEMES)}"
        )
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


_DEFAULT_REGISTRY = _registry.Default8BitQuantizeRegistry()


def _scheme_supports(layer, registry) -> bool:
    # The prune-preserve registry "supports" every layer without weights but then asks the
    # default registry for its config, so both must know the layer.
    return _DEFAULT_REGISTRY.supports(layer) and registry.supports(layer)


def _why_unsupported(layer, registry) -> str | None:
    """None if `layer` can be quantized under `registry` (+ QUANTIZE_CONFIGS), else the reason."""
    if isinstance(layer, layers.InputLayer) or _folded_by_scheme(layer):
        return None
    if type(layer).__name__ == "PruneLowMagnitude":
        return "pruning wrapper: call tfqat.optimize.prune.strip(model) first"
    if not _scheme_supports(layer, registry) and type(layer) not in QUANTIZE_CONFIGS:
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


def quantize(
    model: keras.Model, scheme: str = "default", activation_quantizer: str = "moving_average"
) -> keras.Model:
    """Returns the QAT version of a float model (a new model; `model` is left as it is).

    Args:
      model: a flat functional tf_keras model (for "prune_preserve": pruned and stripped).
      scheme: "default" (TF-MOT's 8-bit scheme, per-channel conv weights) or "prune_preserve"
        (the same, with weight quantizers that keep a pruned kernel's zeros at zero).
      activation_quantizer: how activation ranges follow training, a key of
        `qat_schedule.ACTIVATION_QUANTIZERS`; their updates can be frozen
        (`qat_schedule.freeze_activation_ranges`).

    The layer names gain TF-MOT's "quant_" prefix (outputs "quant_box_p3", ...). Weight and
    activation ranges start at TF-MOT's [-6, 6]: call `calibrate` (or train) before converting.
    """
    quantize_scheme = _make_scheme(scheme)
    check_activation_quantizer(activation_quantizer)
    check_quantizable(model, scheme)
    registry = quantize_scheme.get_quantize_registry()

    def annotate(layer):
        if isinstance(layer, layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        config = None
        if not _scheme_supports(layer, registry) and not _folded_by_scheme(layer):
            config = QUANTIZE_CONFIGS[type(layer)]()
        return _q.quantize_annotate_layer(layer, quantize_config=config)

    with qat_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
        qat_model = _q.quantize_apply(annotated, quantize_scheme)
    install_activation_quantizers(qat_model, activation_quantizer)
    return qat_model


def load_qat_model(path: str, custom_objects=None) -> keras.Model:
    """Loads a QAT model written by `model.save("....h5")` (see the module docstring)."""
    with qat_scope(custom_objects or {}):
        return keras.models.load_model(path, compile=False)


# === Switching quantizers off ===

# The fake-quantizers of a QAT model by what they quantize: batch-norm outputs (the tensors
# before each activation; the .tflite keeps them in int8 as its LOGISTIC/MUL or ReLU inputs),
# activation outputs, adds and concats ("merge"), other layers' outputs (the heads), weights.
QUANTIZER_GROUPS = ("batch_norm", "activation", "merge", "head", "weights")


def _quantizer_group(inner_layer) -> str:
    """The group (of QUANTIZER_GROUPS) of a wrapped layer's output quantizer, by its type."""
    kind = type(inner_layer).__name__
    if kind == "BatchNormalization":
        return "batch_norm"
    if kind in ("Activation", "ReLU"):
        return "activation"
    if kind in ("Conv2D", "Dense", "DepthwiseConv2D", "Conv2DTranspose"):
        return "head"
    return "merge"


def _pass_through(inputs, training, weights, **kwargs):
    """A quantizer that leaves its tensor in float."""
    return inputs


def _quantizes(activation) -> bool:
    """Whether a QuantizeAwareActivation still quantizes (a Conv2D followed by batch norm has
    one that does not: the batch norm's output is quantized instead)."""
    if activation.quantizer is _pass_through:
        return False
    return activation._should_pre_quantize() or activation._should_post_quantize()  # noqa: SLF001


def switch_off_quantizers(qat_model: keras.Model, groups) -> int:
    """Makes the fake-quantizers of `groups` (QUANTIZER_GROUPS) pass values through, for
    measuring what each group costs (tools/quantization_breakdown.py); returns how many it
    switched off. The model then computes those tensors in float; it is not for export.

    TF-MOT has no switch for this: its QuantizeWrapper keeps the output quantizers in
    `_output_quantizers`, the QuantizeAwareActivations it sets on the wrapped layer at every call
    in `_quantize_activations`, and (weight, quantizer, range variables) in `_weight_vars`.
    """
    unknown = sorted(set(groups) - set(QUANTIZER_GROUPS))
    if unknown:
        raise ValueError(f"unknown quantizer groups {unknown}; valid: {list(QUANTIZER_GROUPS)}")
    count = 0
    for wrapper in qat_model.layers:
        if not isinstance(wrapper, _q.QuantizeWrapper):
            continue
        inner = wrapper.layer
        if _quantizer_group(inner) in groups:
            if wrapper._output_quantizers:  # noqa: SLF001
                wrapper._output_quantizers = []  # noqa: SLF001
                count += 1
            for activation in wrapper._quantize_activations:  # noqa: SLF001
                if _quantizes(activation):
                    activation.quantizer = _pass_through
                    count += 1
        if "weights" in groups:
            weight_vars = wrapper._weight_vars  # noqa: SLF001
            count += sum(quantizer is not _pass_through for _, quantizer, _ in weight_vars)
            wrapper._weight_vars = [(w, _pass_through, v) for w, _, v in weight_vars]  # noqa: SLF001
    return count
