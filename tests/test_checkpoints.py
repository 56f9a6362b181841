"""Restores that prove themselves: every variable matched, or an error naming what did not."""

import numpy as np
import pytest
from conftest import small_detector

from tfqat.optimize import prune, qat
from tfqat.tf_compat import keras, tf
from tfqat.train import checkpoints
from tfqat.train.checkpoints import CheckpointMismatch
from tfqat.train.loop import ModelEMA, StageConfig, make_optimizer


def _training_state(model):
    """What `fit` checkpoints: the model, its EMA, the built optimizer and the counters."""
    optimizer = make_optimizer(StageConfig("float", 1, 2, 0.01))
    optimizer.build(model.trainable_variables)
    ema = ModelEMA(model, 0.99, 10.0)
    return tf.train.Checkpoint(
        model=model,
        ema=ema.model,
        ema_updates=ema.updates,
        optimizer=optimizer,
        epoch=tf.Variable(0, dtype=tf.int64),
    )


def _pruned_detector():
    model = prune.prune(small_detector(), 0.5, begin_step=0, end_step=4, frequency=2)
    prune.start_pruning(model)
    return model


@pytest.mark.parametrize(
    "build",
    [
        lambda: _training_state(small_detector()),
        lambda: _training_state(_pruned_detector()),
        lambda: tf.train.Checkpoint(ema=small_detector(num_classes=5)),
        small_detector,  # the root itself: what model.save_weights writes
    ],
    ids=["float-training-state", "pruned-training-state", "ema-only", "model-root"],
)
def test_variable_keys_are_the_keys_tensorflow_writes(tmp_path, build):
    root = build()
    keys = checkpoints.variable_keys(root)
    writer = root if isinstance(root, tf.train.Checkpoint) else tf.train.Checkpoint(root)
    path = writer.write(str(tmp_path / "ckpt"))
    written = {
        name: shape for name, shape in tf.train.list_variables(path) if name.endswith("_VALUE")
    }
    assert set(keys) == set(written)
    assert all(keys[k].shape.as_list() == written[k] for k in keys)


def test_variable_keys_of_a_qat_training_state(tmp_path):
    with qat.qat_scope():
        test_variable_keys_are_the_keys_tensorflow_writes(
            tmp_path, lambda: _training_state(qat.quantize(small_detector(), "default"))
        )


def _save_ema(model, model_dir):
    """A run directory whose float stage's latest checkpoint holds `model` as its EMA weights."""
    directory = checkpoints.stage_dir(str(model_dir), "float")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(ema=model), directory, 2)
    return manager.save(checkpoint_number=1)


def test_restore_stage_model_loads_every_weight(tmp_path):
    source = small_detector()
    source.set_weights([w + 1.0 for w in source.get_weights()])
    _save_ema(source, tmp_path)

    class Task:
        build_model = staticmethod(small_detector)

    restored = checkpoints.restore_stage_model(Task, str(tmp_path), "float")
    for a, b in zip(restored.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_restore_of_another_model_names_the_checkpoint_and_the_variables(tmp_path):
    path = _save_ema(small_detector(num_classes=3), tmp_path)
    with pytest.raises(CheckpointMismatch) as error:
        checkpoints.restore_checked(
            tf.train.Checkpoint(ema=small_detector(num_classes=5)), path, "the float model"
        )
    assert str(error.value) == (
        f"{path} does not fit the float model: 2 have another shape "
        "(ema:cls_p3/kernel (1,1,16,5; checkpoint: 1,1,16,3), ema:cls_p3/bias (5; checkpoint: 3))"
    )


def test_restore_of_a_checkpoint_missing_variables_names_them(tmp_path):
    inputs = keras.Input((64, 64, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="only")(inputs))
    path = _save_ema(other, tmp_path)
    model = small_detector()
    with pytest.raises(CheckpointMismatch, match=r"of its \d+ variables are not in it \(ema:"):
        checkpoints.restore_checked(tf.train.Checkpoint(ema=model), path, "the float model")


def test_init_checkpoint_from_another_head_loads_the_rest_and_names_the_skipped(tmp_path):
    source = small_detector(num_classes=3)
    source.set_weights([w + 1.0 for w in source.get_weights()])
    _save_ema(source, tmp_path)
    model = small_detector(num_classes=5)
    initial = {w.name: w.numpy() for w in model.weights}

    skipped = checkpoints.load_float_weights(model, str(tmp_path))

    assert skipped == [
        "ema:cls_p3/kernel (1,1,16,5; checkpoint: 1,1,16,3)",
        "ema:cls_p3/bias (5; checkpoint: 3)",
    ]
    for weight in model.weights:
        if weight.name.startswith("cls_p3/"):
            np.testing.assert_array_equal(weight.numpy(), initial[weight.name])
        else:
            expected = source.get_layer(weight.name.split("/")[0])
            values = {w.name: w.numpy() for w in expected.weights}
            np.testing.assert_array_equal(weight.numpy(), values[weight.name])


def test_init_checkpoint_with_another_backbone_fails(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, name="stem")(inputs)
    path = tf.train.Checkpoint(model=keras.Model(inputs, x)).write(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointMismatch, match=r"does not fit this model \(--init_checkpoint\)"):
        checkpoints.load_float_weights(small_detector(), path)


def test_init_checkpoint_from_save_weights_loads_everything(tmp_path):
    source = small_detector()
    source.set_weights([w * 2.0 for w in source.get_weights()])
    source.save_weights(str(tmp_path / "weights"))
    model = small_detector()
    assert checkpoints.load_float_weights(model, str(tmp_path / "weights")) == []
    for a, b in zip(model.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_init_checkpoint_that_is_not_a_checkpoint_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a TF checkpoint"):
        checkpoints.load_float_weights(small_detector(), str(tmp_path / "nothing"))


def test_init_checkpoint_h5_must_fit_exactly(tmp_path):
    small_detector(num_classes=3).save_weights(str(tmp_path / "weights.h5"))
    with pytest.raises(CheckpointMismatch, match=r"weights.h5 does not fit .*cls_p3/kernel"):
        checkpoints.load_float_weights(small_detector(num_classes=5), str(tmp_path / "weights.h5"))
