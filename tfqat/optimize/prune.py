"""Magnitude pruning with TF-MOT, for tfqat's custom training loop.

Recipe (see tests/test_prune.py):

    pruned = prune(float_model, 0.5, begin_step=0, end_step=2000)
    start_pruning(pruned)            # once, before the first training step
    ... fit(task, pruned, ...)       # every model(x, training=True) advances the pruning step
    apply_masks(pruned)              # after the last step (and before any save)
    check_sparsity(pruned, 0.5)      # fails loudly if the target was not reached
    sparse = strip(pruned)           # plain layers with zeros in their kernels
    qat_model = quantize(sparse, "prune_preserve")   # QAT that keeps the zeros

In TF-MOT 0.8.1 the wrapper itself increments its `pruning_step` and updates its mask inside
`call(training=True)`; `UpdatePruningStep` only resets the step from -1 to 0 at train begin (the
wrapper asserts step >= 1 after its increment, so training without it fails) and re-applies the
masks at epoch end (the optimizer's last update makes masked weights non-zero again). A custom
loop therefore calls `start_pruning` before training and `apply_masks` after it.

Anything that copies weights (an EMA model) must get the masks of the trained model:
`apply_masks(ema_model, masks_from=model)`, because averaging 0/1 masks and masked kernels does
not give zeros. Worse, a pruned model runs kernel = kernel * mask on every call, inference
included: an EMA copy whose masks were averaged (0 < mask < 1) shrinks its kernels at each
validation call. An EMA should copy the mask variables verbatim instead of averaging them.
"""

import dataclasses
import re

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude,  # not exported by TF-MOT's public API
)

from tfqat.optimize.prune_defaults import DEFAULT_EXCLUDE
from tfqat.tf_compat import keras

__all__ = [
    "DEFAULT_EXCLUDE",
    "PruningOptions",
    "PRUNABLE_LAYERS",
    "SCHEDULES",
    "PruningTargetNotReached",
    "apply_masks",
    "check_sparsity",
    "is_prunable",
    "model_kernel_sparsity",
    "mask_sparsity",
    "prune",
    "prune_for_stage",
    "pruned_layer_names",
    "sparsity_report",
    "start_pruning",
    "strip",
]

_sparsity = tfmot.sparsity.keras
layers = keras.layers

# Only these layers' kernels are pruned (exact types: no subclasses).
PRUNABLE_LAYERS = (layers.Conv2D, layers.Dense)
# Layers whose kernels count in the sparsity reports.
_KERNEL_LAYERS = (layers.Conv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose, layers.Dense)


class PruningTargetNotReached(RuntimeError):
    """A pruned model's kernels are less sparse than asked for."""


def _polynomial(target, begin_step, end_step, frequency):
    if end_step <= begin_step:
        raise ValueError(
            f"polynomial schedule needs end_step > begin_step; got {begin_step}, {end_step}"
        )
    if (end_step - begin_step) % frequency:
        raise ValueError(
            f"polynomial schedule: end_step - begin_step ({end_step - begin_step}) must be a "
            f"multiple of frequency ({frequency}), or the last mask update falls short of the "
            "target"
        )
    return _sparsity.PolynomialDecay(
        0.0, target, begin_step, end_step, power=3, frequency=frequency
    )


def _constant(target, begin_step, end_step, frequency):
    return _sparsity.ConstantSparsity(target, begin_step, end_step, frequency=frequency)


SCHEDULES = {"polynomial": _polynomial, "constant": _constant}


def _matches(name, patterns) -> bool:
    return any(re.search(p, name) for p in patterns)


def is_prunable(layer, exclude=DEFAULT_EXCLUDE) -> bool:
    """Whether `prune` wraps this (plain) layer: a Conv2D/Dense kernel not excluded by name."""
    return type(layer) in PRUNABLE_LAYERS and not _matches(layer.name, exclude)


def prune(
    model: keras.Model,
    target_sparsity: float,
    begin_step: int = 0,
    end_step: int = -1,
    schedule: str = "polynomial",
    exclude=DEFAULT_EXCLUDE,
    block_size=None,
    m_by_n=None,
    frequency: int = 100,
) -> keras.Model:
    """Wraps every prunable kernel of `model` in TF-MOT's PruneLowMagnitude (a new model).

    Args:
      model: a functional float model.
      target_sparsity: fraction of zeros each pruned kernel reaches at `end_step`.
      begin_step, end_step: pruning steps (training steps of this stage); end_step -1 means
        "never stop" (constant schedule only).
      schedule: "polynomial" (0 -> target, cubic, as in Zhu & Gupta 2017) or "constant".
      exclude: regular expressions (re.search) on layer names that stay dense.
      block_size: (height, width) blocks pruned together. TF-MOT supports blocks only for 2-D
        kernels (it rejects even 1x1 convolutions' [1, 1, in, out]), so they apply to Dense
        layers; convolutions are pruned elementwise. ValueError if no Dense layer is pruned.
      m_by_n: e.g. (2, 4): m zeros in every n consecutive input-channel weights (TFLite's
        [out, h, w, in] layout). The pattern is set at the first step and then kept;
        `target_sparsity` must then be m / n.
      frequency: steps between mask updates.
    """
    if not 0.0 < target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in (0, 1); got {target_sparsity}")
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown pruning schedule {schedule!r}; valid choices: {sorted(SCHEDULES)}"
        )
    if m_by_n is not None:
        m, n = m_by_n
        if abs(target_sparsity - m / n) > 1e-6:
            raise ValueError(
                f"m_by_n {m_by_n} prunes exactly {m}/{n}; got target {target_sparsity}"
            )
        if block_size is not None:
            raise ValueError("block_size and m_by_n exclude each other")
    pruning_schedule = SCHEDULES[schedule](target_sparsity, begin_step, end_step, frequency)

    selected = [layer.name for layer in model.layers if is_prunable(layer, exclude)]
    if not selected:
        raise ValueError(f"no prunable layer in {model.name!r} (exclude={exclude})")
    dense = {n for n in selected if type(model.get_layer(n)) is layers.Dense}
    if block_size is not None and not dense:
        raise ValueError(
            "block_size needs a Dense layer to prune: TF-MOT 0.8.1 block-prunes 2-D kernels only"
        )

    def wrap(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if layer.name not in selected:
            return clone
        params = {"pruning_schedule": pruning_schedule}
        if m_by_n is not None:
            params["sparsity_m_by_n"] = tuple(m_by_n)
        if block_size is not None and layer.name in dense:
            params["block_size"] = tuple(block_size)
        return _sparsity.prune_low_magnitude(clone, **params)

    with _sparsity.prune_scope():
        pruned = keras.models.clone_model(model, clone_function=wrap)
    for layer in pruned.layers:  # wrappers are named "prune_low_magnitude_<layer>"
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        inner.set_weights(model.get_layer(inner.name).get_weights())
    return pruned


@dataclasses.dataclass
class PruningOptions:
    """How a recipe's prune stage prunes (see `prune` for the meaning of each field)."""

    target_sparsity: float = 0.5
    schedule: str = "polynomial"
    # Fraction of the stage after which the target is reached; the rest fine-tunes the mask.
    end_fraction: float = 0.6
    exclude: tuple = DEFAULT_EXCLUDE
    m_by_n: tuple | None = None
    mask_updates: int = 10


def prune_for_stage(model: keras.Model, options: PruningOptions, stage_steps: int):
    """`prune` with a schedule that reaches the target after `end_fraction` of the stage."""
    end_step = max(1, round(options.end_fraction * stage_steps))
    frequency = end_step // min(options.mask_updates, end_step)
    end_step = frequency * (end_step // frequency)  # TF-MOT: a multiple of the frequency
    return prune(
        model,
        options.target_sparsity,
        0,
        end_step,
        schedule=options.schedule,
        exclude=options.exclude,
        m_by_n=options.m_by_n,
        frequency=frequency,
    )


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def pruned_layer_names(model) -> list[str]:
    """Names of the layers wrapped for pruning (the wrapped layers' own names)."""
    return [layer.layer.name for layer in _wrappers(model)]


def mask_sparsity(model: keras.Model) -> dict[str, float]:
    """Wrapped layer name -> fraction of zeros in its current pruning mask."""
    return {
        layer.layer.name: float(1.0 - np.mean(mask.numpy()))
        for layer in _wrappers(model)
        for _, mask, _ in layer.pruning_vars
    }


def start_pruning(model: keras.Model):
    """Call once before the first training step (TF-MOT's UpdatePruningStep.on_train_begin).

    Sets every wrapper's pruning step from -1 (new model) to 0; a restored model keeps its step.
    """
    callback = _sparsity.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()


def apply_masks(model: keras.Model, masks_from: keras.Model | None = None):
    """kernel = kernel * mask for every pruned layer (UpdatePruningStep.on_epoch_end).

    With `masks_from` (the trained model), its masks are copied first: use it on an EMA copy.
    """
    if masks_from is not None:
        for layer in _wrappers(model):
            source = masks_from.get_layer(layer.name)
            for (_, mask, _), (_, source_mask, _) in zip(layer.pruning_vars, source.pruning_vars):
                mask.assign(source_mask)
    for layer in _wrappers(model):
        layer.pruning_obj.weight_mask_op()


def strip(model: keras.Model) -> keras.Model:
    """The model with the pruning wrappers removed (zeros kept in the kernels)."""
    return _sparsity.strip_pruning(model)


def _kernels(model):
    """(layer name, kernel array) for every conv/dense kernel, through any wrapper.

    A QAT wrapper replaces its layer's `kernel` attribute by the fake-quantized tensor, so the
    kernel is looked up among the variables.
    """
    found = []
    for layer in model.layers:
        inner = layer
        while hasattr(inner, "layer") and isinstance(inner.layer, keras.layers.Layer):
            inner = inner.layer  # PruneLowMagnitude, QuantizeWrapper
        if not isinstance(inner, _KERNEL_LAYERS):
            continue
        kernels = [
            w
            for w in layer.weights
            if w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel")
        ]
        found.append((inner.name, kernels[0].numpy()))
    return found


def sparsity_report(model: keras.Model) -> dict[str, float]:
    """Layer name -> fraction of exact zeros in its kernel (every conv/dense layer)."""
    return {name: float(np.mean(kernel == 0)) for name, kernel in _kernels(model)}


def model_kernel_sparsity(model: keras.Model, layer_names=None) -> float:
    """Fraction of exact zeros over all conv/dense kernels (or those in `layer_names`)."""
    kernels = [k for name, k in _kernels(model) if layer_names is None or name in layer_names]
    total = sum(k.size for k in kernels)
    return float(sum(np.count_nonzero(k == 0) for k in kernels) / max(total, 1))


def _m_by_n_violations(kernel, m, n) -> int:
    """Groups of n consecutive input-channel weights with fewer than m zeros."""
    if kernel.ndim == 4:  # [h, w, in, out] -> [out, h, w, in]
        rows = np.transpose(kernel, (3, 0, 1, 2)).reshape(-1, kernel.shape[2])
    else:  # Dense [in, out] -> [out, in]
        rows = kernel.T
    pad = (-rows.shape[1]) % n
    rows = np.pad(rows, ((0, 0), (0, pad)))  # padding counts as zeros, as in TF-MOT
    groups = rows.reshape(rows.shape[0], -1, n)
    return int(np.count_nonzero((groups == 0).sum(-1) < m))


def check_sparsity(
    model: keras.Model,
    target_sparsity: float,
    exclude=DEFAULT_EXCLUDE,
    m_by_n=None,
    tolerance: float = 0.01,
) -> dict[str, float]:
    """Raises PruningTargetNotReached unless every prunable kernel is at least that sparse.

    Works on a pruned model (its wrapped layers are checked; call `apply_masks` first) or on a
    stripped / plain one (the layers `prune` would wrap under `exclude`). With `m_by_n`, the
    pattern is checked instead of the fraction. Returns the per-layer sparsity of the checked
    layers.
    """
    names = pruned_layer_names(model) or [
        layer.name for layer in model.layers if is_prunable(layer, exclude)
    ]
    kernels = {name: k for name, k in _kernels(model) if name in names}
    report = {name: float(np.mean(k == 0)) for name, k in kernels.items()}
    if m_by_n is None:
        problems = [
            f"{name}: {value:.4f} < {target_sparsity:.4f}"
            for name, value in report.items()
            if value < target_sparsity - tolerance
        ]
    else:  # the pattern is the target (a kernel with 3 input channels has 1 zero in 3)
        m, n = m_by_n
        problems = [
            f"{name}: {bad} groups of {n} input-channel weights with fewer than {m} zeros"
            for name, kernel in kernels.items()
            if (bad := _m_by_n_violations(kernel, m, n))
        ]
    if not kernels:
        problems.append("no prunable kernel found")
    if problems:
        raise PruningTargetNotReached(
            f"pruning target {target_sparsity} not reached in {len(problems)} layer(s) of "
            f"{model.name!r} (did training run past end_step, and were masks applied?):\n  "
            + "\n  ".join(problems)
        )
    return report
