"""QAT's output distillation (--qat_distillation): each task's loss to a teacher's outputs, and
the training loop that adds it."""

import numpy as np
import pytest
from conftest import small_detector, textured_images

from tfqat.losses.detection import YoloLoss
from tfqat.losses.pose import PoseLoss
from tfqat.models.yolo import build_yolo
from tfqat.tf_compat import tf
from tfqat.train import loop as training

INPUT = (64, 64)
IMAGES = textured_images(4)


def _perturbed(outputs, scale, seed=0):
    rng = np.random.default_rng(seed)
    return [o + scale * rng.standard_normal(o.shape).astype(np.float32) for o in outputs]


def test_detection_distillation_is_zero_at_the_teacher_and_grows_away_from_it():
    loss = YoloLoss(3, INPUT)
    teacher = [tf.constant(o) for o in build_yolo(3, "femto", INPUT)(IMAGES)]
    assert float(loss.distillation(teacher, teacher)) == pytest.approx(0.0, abs=1e-5)
    near, far = (float(loss.distillation(_perturbed(teacher, s), teacher)) for s in (0.1, 1.0))
    assert 0 < near < far


def test_pose_distillation_is_zero_at_the_teacher_and_grows_away_from_it():
    loss = PoseLoss()
    teacher = [tf.random.stateless_normal([2, 32, 24, 17], seed=(1, 2)) * 3.0 - 4.0]
    assert float(loss.distillation(teacher, teacher)) == pytest.approx(0.0, abs=1e-5)
    near, far = (float(loss.distillation(_perturbed(teacher, s), teacher)) for s in (0.1, 1.0))
    assert 0 < near < far


class PullToTeacherTask:
    """A task whose own loss is 0: only distillation moves the model."""

    class loss:  # noqa: N801 (the task's loss object, as YoloLoss and PoseLoss)
        def __call__(self, targets, outputs):
            return {"total": 0.0 * tf.add_n([tf.reduce_sum(o) for o in outputs])}

        @staticmethod
        def distillation(outputs, teacher_outputs):
            pairs = zip(outputs, teacher_outputs)
            return tf.add_n([tf.reduce_mean(tf.square(s - t)) for s, t in pairs])

    loss = loss()

    def train_dataset(self, start_epoch):
        images = textured_images(16, seed=start_epoch + 1)
        return tf.data.Dataset.from_tensor_slices((images, images[:, :1, :1, :1])).repeat().batch(8)

    def validate(self, model, step, writer):
        return {}, []


def _distance(model, teacher):
    return sum(
        float(np.mean((np.asarray(s) - np.asarray(t)) ** 2))
        for s, t in zip(model(IMAGES, training=False), teacher(IMAGES, training=False))
    )


def _train(tmp_path, weight):
    """The student after 12 steps of `PullToTeacherTask` with this distillation weight, and the
    teacher."""
    task = PullToTeacherTask()
    student, teacher = small_detector("relu6"), small_detector("silu")  # other outputs
    teacher.trainable = False
    config = training.StageConfig(
        name="qat",
        epochs=3,
        steps_per_epoch=4,
        learning_rate=0.03,
        warmup_epochs=0,
        optimizer="adamw",
    )
    result = training.fit(
        task,
        student,
        task.train_dataset,
        config,
        str(tmp_path),
        distillation=training.Distillation(teacher, weight),
    )
    return result.model, teacher


def test_the_loop_trains_the_model_towards_the_teacher(tmp_path, capsys):
    control = _distance(*_train(tmp_path / "off", 0.0))  # batch norm statistics still move
    assert "distill: 0.0000" in capsys.readouterr().out  # logged beside the task's losses
    assert _distance(*_train(tmp_path / "on", 1.0)) < 0.5 * control
