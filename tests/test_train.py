"""The training loop: resume, NaN stop, and the smoke recipe's run directory end to end."""

import copy
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    REPO,
    assert_one_tensorboard_run_per_stage,
    assert_verdict_ends_the_report,
    run_recipe,
)

from tfqat.tf_compat import keras, tf
from tfqat.train import loop as training
from tfqat.train.checkpoints import CheckpointMismatch, CheckpointSaveError


class ToyTask:
    """Linear regression: enough to exercise the loop without a detector."""

    def __init__(self, nan_after_step=None):
        self.nan_after_step = nan_after_step
        self.validations = 0

    def build_model(self):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(1, name="dense")(inputs))

    def train_dataset(self, start_epoch):
        rng = np.random.default_rng(start_epoch)
        x = rng.normal(size=(64, 4)).astype(np.float32)
        y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    def loss(self, targets, outputs):
        total = tf.reduce_mean(tf.square(outputs - targets))
        if self.nan_after_step is not None:
            step = tf.cast(self.step_counter, tf.float32)
            total = total * tf.where(step >= self.nan_after_step, np.nan, 1.0)
            self.step_counter.assign_add(1)
        return {"total": total}

    def validate(self, model, step, writer):
        self.validations += 1
        return {"calls": float(self.validations)}, []


def _config(epochs, **kwargs):
    return training.StageConfig(
        name="float",
        epochs=epochs,
        steps_per_epoch=4,
        learning_rate=0.05,
        warmup_epochs=0.5,
        ema_tau=2.0,
        **kwargs,
    )


def test_resume_continues_from_the_saved_step(tmp_path):
    task = ToyTask()
    first = training.fit(
        task, task.build_model(), task.train_dataset, _config(2), str(tmp_path), verbose=0
    )
    assert first.steps == 8
    # A new process would rebuild the model from scratch; the checkpoint restores everything.
    resumed = training.fit(
        task, task.build_model(), task.train_dataset, _config(3), str(tmp_path), verbose=0
    )
    assert resumed.steps == 12
    assert resumed.seconds >= first.seconds
    np.testing.assert_equal(
        sorted(os.listdir(tmp_path / "checkpoints" / "float"))[-1].startswith("ckpt"), True
    )


def test_resume_from_another_model_stops_naming_the_variables(tmp_path):
    task = ToyTask()
    training.fit(task, task.build_model(), task.train_dataset, _config(1), str(tmp_path), verbose=0)
    inputs = keras.Input((4,))
    wider = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    with pytest.raises(CheckpointMismatch) as error:
        training.fit(task, wider, task.train_dataset, _config(2), str(tmp_path), verbose=0)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints" / "float"))
    assert str(error.value).startswith(
        f"{latest} does not fit the float stage's training state: 6 have another shape "
        "(ema:dense/kernel (4,2; checkpoint: 4,1), ema:dense/bias (2; checkpoint: 1), "
        "model:dense/kernel (4,2; checkpoint: 4,1), ...)"
    )


def test_resume_removes_what_a_killed_save_left(tmp_path, capsys):
    task = ToyTask()
    training.fit(task, task.build_model(), task.train_dataset, _config(1), str(tmp_path), verbose=0)
    # What `kill -9` during the save of ckpt-2 leaves (seen on the smoke recipe).
    leftover = tmp_path / "checkpoints" / "float" / "ckpt-2_temp"
    leftover.mkdir()
    (leftover / "part-00000-of-00001.data-00000-of-00001.tempstate1234").write_bytes(b"\0" * 999)
    resumed = training.fit(
        task, task.build_model(), task.train_dataset, _config(2), str(tmp_path), verbose=0
    )
    assert resumed.steps == 8
    assert not leftover.exists()
    assert "[float] removed ckpt-2_temp, what an interrupted save left" in capsys.readouterr().out


def test_finished_stage_is_not_trained_again(tmp_path):
    task = ToyTask()
    training.fit(task, task.build_model(), task.train_dataset, _config(1), str(tmp_path), verbose=0)
    calls = task.validations
    again = training.fit(
        task, task.build_model(), task.train_dataset, _config(1), str(tmp_path), verbose=0
    )
    assert again.steps == 4 and task.validations == calls


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    task = ToyTask(nan_after_step=6)
    task.step_counter = tf.Variable(0, dtype=tf.int64)
    with pytest.raises(training.TrainingDiverged, match=r"loss became nan at epoch 2"):
        training.fit(
            task, task.build_model(), task.train_dataset, _config(3), str(tmp_path), verbose=0
        )
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints" / "float"))
    assert latest.endswith("ckpt-1")
    model = task.build_model()
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    assert all(np.isfinite(w).all() for w in model.get_weights())


def _fill_disk_midway(error, written):
    """A stand-in for tf.train.Checkpoint._write: the disk fills after the data and index files
    are there but before the `checkpoint` state file names them, the data cut to half."""
    write = tf.train.Checkpoint._write

    def write_then_fail(self, prefix, options=None):
        options = copy.copy(options)
        options.experimental_write_callbacks = None  # the state update never comes
        path = write(self, prefix, options=options)
        data = f"{path}.data-00000-of-00001"
        os.truncate(data, os.path.getsize(data) // 2)
        written.append(path)
        raise error

    return write_then_fail


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # What TensorFlow raises on a full disk (measured on a 3 MB tmpfs).
        tf.errors.ResourceExhaustedError(None, None, "ckpt_temp/part; No space left on device"),
    ],
    ids=["OSError", "ResourceExhaustedError"],
)
def test_a_full_disk_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    task = ToyTask()
    training.fit(task, task.build_model(), task.train_dataset, _config(1), str(tmp_path), verbose=0)
    stage_dir = str(tmp_path / "checkpoints" / "float")
    written = []
    monkeypatch.setattr(tf.train.Checkpoint, "_write", _fill_disk_midway(error, written))
    with pytest.raises(CheckpointSaveError) as failure:
        training.fit(
            task, task.build_model(), task.train_dataset, _config(2), str(tmp_path), verbose=0
        )
    monkeypatch.undo()
    assert written == [f"{stage_dir}/ckpt-2"]
    assert str(failure.value).startswith(f"[float] epoch 2: could not write {stage_dir}/ckpt-2 (")
    assert str(failure.value).endswith(
        f"No space left on device); the latest checkpoint is still {stage_dir}/ckpt-1, and a "
        "rerun resumes from it"
    )
    assert tf.train.latest_checkpoint(stage_dir) == f"{stage_dir}/ckpt-1"
    # The rerun restores ckpt-1 (every variable checked) and ends where an unbroken run ends.
    rerun = training.fit(
        task, task.build_model(), task.train_dataset, _config(2), str(tmp_path), verbose=0
    )
    assert rerun.steps == 8
    assert tf.train.latest_checkpoint(stage_dir) == f"{stage_dir}/ckpt-2"


def test_warmup_cosine_schedule_shape():
    schedule = training.WarmupCosine(0.1, total_steps=100, warmup_steps=10, final_ratio=0.01)
    lrs = [float(schedule(s)) for s in (0, 5, 10, 55, 100)]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(0.05) and lrs[2] == pytest.approx(0.1)
    assert lrs[3] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5), rel=1e-3)
    assert lrs[4] == pytest.approx(0.001)


ARTIFACTS = [
    "keras_float",
    "keras_qat",
    "tflite_float32",
    "tflite_int8_ptq",
    "tflite_int8",
    "onnx_int8",
    "openvino_int8",
    "openvino_float",
    "tflite_int8_android",
]
EXPORTED = [
    "model_int8.tflite",
    "model_int8_ptq.tflite",
    "model_float32.tflite",
    "model_int8.onnx",
    "openvino/model_int8.xml",
    "openvino/model_int8.bin",
    "openvino/model_float.xml",
    "openvino/model_float.bin",
    "metadata.json",
    "model_int8_android.tflite",
]


def test_smoke_recipe_writes_the_run_directory(smoke_yolo_run):
    model_dir = smoke_yolo_run
    for path in (
        ["flags.txt", "report.json", "report.md"]
        + [f"export/{f}" for f in EXPORTED]
        + [f"predictions/{name}.json" for name in ARTIFACTS]
    ):
        assert (model_dir / path).exists(), path
    report = json.loads((model_dir / "report.json").read_text())
    assert_one_tensorboard_run_per_stage(model_dir, report["stages"])
    assert report["task"] == "detection" and report["input_size"] == [64, 64]
    assert os.path.isabs(report["val_annotations"])
    assert [s["name"] for s in report["stages"]] == ["float", "qat", "float_reference"]
    assert sorted(a["name"] for a in report["artifacts"]) == sorted(ARTIFACTS)
    assert set(report["parity"]) == {"keras_qat", "onnx_int8", "openvino_int8"}
    row = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    assert row["precision"] == "int8" and row["size_bytes"] > 0
    assert_verdict_ends_the_report(model_dir, report, "mAP50_95")

    from tfqat.postprocess.metrics import coco_metrics

    # Keras rows reuse their stage's last validation; each row's file still gives its metric.
    for row in report["artifacts"]:
        if row["name"] in ("tflite_int8", "keras_float", "keras_qat"):
            results = json.loads((model_dir / row["predictions"]).read_text())
            recomputed = coco_metrics(report["val_annotations"], results, "bbox")
            assert recomputed["mAP50_95"] == pytest.approx(row["metrics"]["mAP50_95"], abs=1e-6)


@pytest.mark.slow
def test_flags_txt_reruns_the_job_and_resumes_every_finished_stage(smoke_yolo_run):
    before = json.loads((smoke_yolo_run / "report.json").read_text())
    env = dict(os.environ, TFQAT_CACHE_DIR=str(smoke_yolo_run.parent / "cache"))
    subprocess.run(
        [sys.executable, "-m", "tfqat.train", f"--flagfile={smoke_yolo_run}/flags.txt"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads((smoke_yolo_run / "report.json").read_text())["stages"] == before["stages"]


def run_tool(script: str, run_dir, *flags):
    """`python tools/<script> --model_dir=<run_dir> <flags>` on a fixture's run; must exit 0."""
    env = dict(os.environ, TFQAT_CACHE_DIR=str(run_dir.parent / "cache"))
    command = [sys.executable, os.path.join(REPO, "tools", script), f"--model_dir={run_dir}"]
    result = subprocess.run([*command, *flags], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_compare_ema_scores_the_ema_as_the_run_does(smoke_yolo_run):
    """tools/compare_ema.py: the float_reference stage's EMA scores what the report gives its
    keras_float; its trained weights are scored beside it."""
    result = run_tool("compare_ema.py", smoke_yolo_run, "--stage=float_reference")
    report = json.loads((smoke_yolo_run / "report.json").read_text())
    (keras_float,) = [a for a in report["artifacts"] if a["name"] == "keras_float"]
    line = result.stdout.strip().splitlines()[-1]
    assert f"EMA mAP50_95={keras_float['metrics']['mAP50_95']:.4f} " in line, line
    assert " trained mAP50_95=" in line, line


def test_quantization_breakdown_starts_from_the_qat_model_the_run_scored(smoke_yolo_run):
    """tools/quantization_breakdown.py: "all on" scores the report's keras_qat, and each variant
    names how many quantizers it switched off (the mechanics: test_qat.py)."""
    result = run_tool("quantization_breakdown.py", smoke_yolo_run)
    report = json.loads((smoke_yolo_run / "report.json").read_text())
    (keras_qat,) = [a for a in report["artifacts"] if a["name"] == "keras_qat"]
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(smoke_yolo_run))]
    assert len(lines) == 8, result.stdout
    assert f"all on (0 off): mAP50_95={keras_qat['metrics']['mAP50_95']:.4f} " in lines[0]
    counts = {line.split(str(smoke_yolo_run))[1].split(" off)")[0] for line in lines}
    # The smoke model: 65 conv-BN-SiLU blocks, 21 adds and concats, 6 heads, 71 kernels.
    assert counts == {
        " all on (0",
        " batch-norm outputs off (65",
        " activation outputs off (65",
        " add and concat outputs off (21",
        " head outputs off (6",
        " weights off (71",
        " every activation off (157",
        " nothing quantized (228",
    }, counts


@pytest.mark.slow
def test_export_entry_rewrites_every_artifact_from_checkpoints(smoke_yolo_run):
    int8 = smoke_yolo_run / "export" / "model_int8.tflite"
    int8.unlink()
    subprocess.run(
        [sys.executable, "-m", "tfqat.export", f"--model_dir={smoke_yolo_run}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads((smoke_yolo_run / "report.json").read_text())
    assert int8.exists()
    assert sorted(a["name"] for a in report["artifacts"]) == sorted(ARTIFACTS)


@pytest.mark.slow
def test_prune_pqat_recipe_keeps_the_zeros_in_the_int8_file(smoke_pqat_run):
    report = json.loads((smoke_pqat_run / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "float",
        "prune",
        "pqat",
        "float_reference_prune",
        "float_reference",
    ]
    rows = {a["name"]: a for a in report["artifacts"]}
    # 50 % of every pruned kernel; the stem and output convolutions (about 4 %) stay dense.
    assert rows["tflite_int8"]["sparsity"] > 0.45
    assert rows["keras_qat"]["sparsity"] == pytest.approx(rows["tflite_int8"]["sparsity"], abs=0.01)
    assert rows["tflite_int8_ptq"]["sparsity"] < 0.05
    assert rows["tflite_int8"]["gzip_bytes"] < 0.8 * rows["tflite_int8_ptq"]["gzip_bytes"]


@pytest.mark.slow
def test_smoke_recipe_with_frozen_batchnorm_and_ranges(tmp_path):
    """--qat_freeze_*_after=0.5 of 2 QAT epochs: the QAT model's batch-norm statistics and
    activation ranges in the second epoch's checkpoint are the first's, its kernels are not;
    the int8 files export and the report has its verdict."""
    freeze = ["--qat_freeze_bn_after=0.5", "--qat_freeze_ranges_after=0.5"]
    flags = ["--qat_epochs=2", "--qat_activation_quantizer=last_value", *freeze]
    report = run_recipe("smoke_yolo.flags", tmp_path / "run", tmp_path / "cache", *flags)
    assert report["stages"][1] == {**report["stages"][1], "name": "qat", "steps": 4}
    assert_verdict_ends_the_report(tmp_path / "run", report, "mAP50_95")
    stage = tmp_path / "run" / "checkpoints" / "qat"
    first, second = (tf.train.load_checkpoint(str(stage / f"ckpt-{n}")) for n in (1, 2))
    keys = [k for k, _ in tf.train.list_variables(str(stage / "ckpt-1")) if k.startswith("model/")]

    def changed(*names):
        found = [k for k in keys if any(f"/{name}/" in k for name in names)]
        assert found, names
        return sum(
            not np.array_equal(first.get_tensor(k), second.get_tensor(k)) for k in found
        ), len(found)

    assert changed("moving_mean", "moving_variance")[0] == 0
    assert changed("output_min", "output_max", "post_activation_min", "post_activation_max")[0] == 0
    kernels_changed, kernels = changed("kernel")
    assert kernels_changed == kernels


def test_contradictory_flags_fail_before_work(tmp_path):
    command = [
        sys.executable,
        "-m",
        "tfqat.train",
        "--flagfile=configs/smoke_yolo.flags",
        f"--model_dir={tmp_path}",
        "--train_annotations=/x.json",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert "all-or-none" in result.stderr
    assert not (tmp_path / "flags.txt").exists()
