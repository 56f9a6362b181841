"""Options of a QAT stage: the activation quantizer, and freezing batch-norm statistics, then
the activation ranges, for the last part of the stage.

The schedule of Jacob et al. 2018 (arXiv:1712.05877; TF 1's `tf.contrib.quantize`
`freeze_bn_delay`): once the weights are close to converged, batch norm stops following the
statistics of each batch and normalises with its moving mean and variance, which stop updating,
as it does at inference; the weights, gamma and beta keep training. Freezing the activation
ranges as well (Krishnamoorthi 2018, arXiv:1806.08342; PyTorch's `disable_observer`) lets the
last steps fit the weights to the ranges the int8 file will have. Weight ranges are not frozen:
they are each kernel's current min/max (TF-MOT's LastValueQuantizer), which never clips it.

Both switches are Python state read when the training step is traced: `fit` traces the step
again when `QatOptions.step_hook` reports a change. Neither is saved: the hook sets them again
from the step count, so a resumed stage past a freeze point starts frozen.
"""

import dataclasses

import tensorflow_model_optimization as tfmot

from tfqat.tf_compat import keras

_q = tfmot.quantization.keras

# --qat_activation_quantizer -> TF-MOT's quantizer of every activation and output range.
ACTIVATION_QUANTIZERS = {
    "moving_average": _q.quantizers.MovingAverageQuantizer,  # TF-MOT's default (EMA, 0.999)
    "last_value": _q.quantizers.LastValueQuantizer,  # each batch's min/max
    "all_values": _q.quantizers.AllValuesQuantizer,  # min/max over every batch seen
}


@dataclasses.dataclass(frozen=True)
class QatOptions:
    """A QAT (or PQAT) stage's options; the freeze points are fractions of its steps (1.0:
    never)."""

    activation_quantizer: str = "moving_average"
    freeze_bn_after: float = 1.0
    freeze_ranges_after: float = 1.0
    distillation: float = 0.0  # weight of the float model's outputs as extra targets (0: off)

    def step_hook(self, stage: str, total_steps: int):
        """(model, step) -> whether it changed the model: freezes batch norm from step
        round(freeze_bn_after * total_steps) on, the activation ranges from theirs."""
        freezes = [
            (round(self.freeze_bn_after * total_steps), freeze_batchnorm, "batch norm"),
            (round(self.freeze_ranges_after * total_steps), freeze_activation_ranges, "ranges"),
        ]

        def hook(model, step) -> bool:
            changed = False
            for start, freeze, what in freezes:
                if step >= start and freeze(model):
                    print(f"[{stage}] step {step}: {what} frozen")
                    changed = True
            return changed

        return hook


class _ActivationQuantizer(_q.quantizers.Quantizer):
    """One of ACTIVATION_QUANTIZERS whose range stops updating once `frozen` is set (it then
    quantizes with the stored range, as at inference)."""

    def __init__(self, kind: str, config: dict):
        self.kind = kind
        self.quantizer = ACTIVATION_QUANTIZERS[kind](**config)
        self.frozen = False

    def build(self, tensor_shape, name, layer):
        return self.quantizer.build(tensor_shape, name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        return self.quantizer(inputs, training and not self.frozen, weights, **kwargs)

    def get_config(self):
        return {"kind": self.kind, "config": self.quantizer.get_config()}


def _wrappers(qat_model):
    return [layer for layer in qat_model.layers if isinstance(layer, _q.QuantizeWrapper)]


def check_activation_quantizer(kind: str):
    if kind not in ACTIVATION_QUANTIZERS:
        raise ValueError(
            f"unknown activation quantizer {kind!r}; valid choices: {sorted(ACTIVATION_QUANTIZERS)}"
        )


def install_activation_quantizers(qat_model: keras.Model, kind: str = "moving_average"):
    """Replaces every activation and output quantizer of a model just made by
    `tfqat.optimize.qat.quantize` (TF-MOT's 8-bit schemes use MovingAverageQuantizer for all of
    them) with a freezable quantizer of `kind`. The range variables stay: the three kinds keep
    one min/max pair per tensor alike, so checkpoints and the inference graph do not change.
    A model cloned or reloaded from its config has TF-MOT's quantizers again."""
    check_activation_quantizer(kind)

    def replaced(quantizer):
        if type(quantizer) is _q.quantizers.MovingAverageQuantizer:
            return _ActivationQuantizer(kind, quantizer.get_config())
        return quantizer

    # TF-MOT's wrapper keeps them in these attributes (set in its build); no public setter.
    for wrapper in _wrappers(qat_model):
        wrapper._output_quantizers = [replaced(q) for q in wrapper._output_quantizers]  # noqa: SLF001
        for activation in wrapper._quantize_activations:  # noqa: SLF001
            activation.quantizer = replaced(activation.quantizer)


def _freezable_quantizers(qat_model: keras.Model) -> list[_ActivationQuantizer]:
    found = []
    for wrapper in _wrappers(qat_model):
        found += wrapper._output_quantizers  # noqa: SLF001
        found += [a.quantizer for a in wrapper._quantize_activations]  # noqa: SLF001
    return [q for q in found if isinstance(q, _ActivationQuantizer)]


def freeze_activation_ranges(qat_model: keras.Model) -> bool:
    """Stops every activation range from updating; True if any was still updating."""
    quantizers = _freezable_quantizers(qat_model)
    if not quantizers:
        raise ValueError(
            f"{qat_model.name}: no freezable activation quantizer; a model made by "
            "tfqat.optimize.qat.quantize has them (not one cloned or reloaded from its config)"
        )
    changed = not all(q.frozen for q in quantizers)
    for quantizer in quantizers:
        quantizer.frozen = True
    return changed


def _inference_mode(training=None):
    return False


def batchnorm_layers(qat_model: keras.Model) -> list:
    inner = [getattr(layer, "layer", layer) for layer in qat_model.layers]
    return [layer for layer in inner if isinstance(layer, keras.layers.BatchNormalization)]


def freeze_batchnorm(qat_model: keras.Model) -> bool:
    """Batch norm runs in inference mode from now on, in training steps too: it normalises with
    its moving mean and variance, which stop updating; gamma and beta still train. True if any
    layer changed.

    tf_keras's BatchNormalization asks its `_get_training_value` whether to use the batch's
    statistics. Its public switch, `trainable = False`, would also freeze gamma and beta, and
    move them within `model.weights` (which the EMA of the training loop pairs by position).
    """
    changed = False
    for layer in batchnorm_layers(qat_model):
        if layer.__dict__.get("_get_training_value") is not _inference_mode:
            layer._get_training_value = _inference_mode  # noqa: SLF001
            changed = True
    return changed
