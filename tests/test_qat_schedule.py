"""QAT stage options: the activation quantizer, and freezing batch norm and activation ranges
at a fraction of the stage, through the training loop (resume included)."""

import numpy as np
import pytest
from conftest import init_batchnorm, small_detector, textured_images

from tfqat.optimize import qat
from tfqat.optimize.qat_schedule import (
    ACTIVATION_QUANTIZERS,
    QatOptions,
    batchnorm_layers,
    freeze_activation_ranges,
    freeze_batchnorm,
)
from tfqat.optimize.ranges import calibrate, quantizer_ranges
from tfqat.tf_compat import tf
from tfqat.train import loop as training

IMAGES = textured_images(16)
STEPS_PER_EPOCH = 4


class ToyQatTask:
    """The small detector under QAT, pulled towards outputs of 1 on textured images."""

    def __init__(self, kind="moving_average"):
        self.kind = kind

    def build_model(self):
        model = small_detector()
        init_batchnorm(model, IMAGES)
        qat_model = qat.quantize(model, "default", self.kind)
        calibrate(qat_model, model, IMAGES)
        return qat_model

    def train_dataset(self, start_epoch):
        images = textured_images(32, seed=start_epoch + 1)
        return tf.data.Dataset.from_tensor_slices((images, images[:, :1, :1, :1])).repeat().batch(8)

    def loss(self, targets, outputs):
        return {"total": tf.add_n([tf.reduce_mean(tf.square(o - 1.0)) for o in outputs])}

    def validate(self, model, step, writer):
        return {}, []


def _fit(tmp_path, epochs, options, snapshots):
    """Trains the toy QAT stage (resuming from tmp_path); `snapshots` gets the model's state
    before training, then after every epoch."""
    task = ToyQatTask(options.activation_quantizer)
    config = training.StageConfig(
        name="qat", epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH, learning_rate=0.01
    )
    model = task.build_model()
    snapshots.append(_state(model))
    with qat.qat_scope():  # the loop's EMA clones the model
        training.fit(
            task,
            model,
            task.train_dataset,
            config,
            str(tmp_path),
            verbose=0,
            epoch_summaries=lambda model, step, writer: snapshots.append(_state(model)),
            step_hook=options.step_hook("qat", 2 * STEPS_PER_EPOCH),
        )


def _state(model) -> dict:
    """The variables the freezes concern, by kind: {kind: {name: value}}."""
    state = {"moving": {}, "gamma": {}, "kernel": {}, "activation_range": {}, "kernel_range": {}}
    for bn in batchnorm_layers(model):
        state["moving"][bn.name] = np.concatenate([bn.moving_mean.numpy(), bn.moving_variance])
        state["gamma"][bn.name] = bn.gamma.numpy()
    for variable in model.trainable_variables:
        if variable.name.endswith("kernel:0"):
            state["kernel"][variable.name] = variable.numpy()
    for name, value in quantizer_ranges(model).items():
        kind = "kernel_range" if name.endswith("/kernel") else "activation_range"
        state[kind][name] = np.array(value)
    return state


def _changed(before: dict, after: dict) -> int:
    return sum(not np.array_equal(before[name], after[name]) for name in before)


# === through the training loop ===


def test_after_the_freeze_point_only_weights_and_their_ranges_change(tmp_path, capsys):
    snapshots = []
    options = QatOptions(freeze_bn_after=0.5, freeze_ranges_after=0.5)
    _fit(tmp_path, 2, options, snapshots)
    out = capsys.readouterr().out
    assert "[qat] step 4: batch norm frozen" in out and "[qat] step 4: ranges frozen" in out
    start, middle, end = snapshots  # 4 steps, the freeze point, 4 frozen steps
    assert "quant_cls_p3/output" in start["activation_range"]
    for kind in ("moving", "activation_range"):
        assert _changed(start[kind], middle[kind]) > 0, kind  # they moved before
        assert _changed(middle[kind], end[kind]) == 0, kind
    for kind in ("kernel", "gamma", "kernel_range"):
        assert _changed(middle[kind], end[kind]) == len(middle[kind]), kind


@pytest.mark.slow
def test_a_resumed_stage_past_the_freeze_point_starts_frozen(tmp_path, capsys):
    options = QatOptions(freeze_bn_after=0.25, freeze_ranges_after=0.25)  # from step 2 of 8
    first, resumed = [], []
    _fit(tmp_path, 1, options, first)  # the stage stopped after its first epoch
    _fit(tmp_path, 2, options, resumed)  # a new process: a new model, restored from ckpt-1
    assert "[qat] step 4: batch norm frozen" in capsys.readouterr().out
    assert _changed(first[1]["moving"], resumed[1]["moving"]) == 0
    assert _changed(first[1]["activation_range"], resumed[1]["activation_range"]) == 0
    assert _changed(first[1]["kernel"], resumed[1]["kernel"]) == len(first[1]["kernel"])


# === the model ===


def test_frozen_model_trains_through_its_inference_graph():
    qat_model = ToyQatTask().build_model()
    assert freeze_batchnorm(qat_model) and freeze_activation_ranges(qat_model)
    assert not freeze_batchnorm(qat_model) and not freeze_activation_ranges(qat_model)
    training_outputs = qat_model(IMAGES[:4], training=True)  # sets the kernel ranges too
    for a, b in zip(training_outputs, qat_model(IMAGES[:4], training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("kind", sorted(ACTIVATION_QUANTIZERS))
def test_activation_quantizer_choice_sets_how_ranges_follow_batches(kind):
    qat_model = ToyQatTask(kind).build_model()
    name = "quant_cls_p3/output"
    calibrated = quantizer_ranges(qat_model)[name]
    dark = IMAGES[:4] * 0.2
    cls = np.asarray(qat_model(dark, training=True)[1])  # fake-quantized with the new range
    low, high = quantizer_ranges(qat_model)[name]
    if kind == "last_value":  # this batch's range
        assert (low, high) == pytest.approx((min(cls.min(), 0), max(cls.max(), 0)), abs=0.05)
    elif kind == "all_values":  # never narrower than before
        assert low <= calibrated[0] and high >= calibrated[1]
    else:  # 0.1 % of the way to this batch's range
        assert (low, high) == pytest.approx(calibrated, rel=0.01)


def test_unknown_activation_quantizer_is_named():
    with pytest.raises(ValueError, match="'ema'.*valid choices"):
        qat.quantize(small_detector(), "default", "ema")
