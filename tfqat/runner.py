"""Runs a recipe's stages in order, then evaluates and reports (called by tfqat.train)."""

import os

import numpy as np

from tfqat import report as report_lib
from tfqat.evaluation import write_results
from tfqat.tf_compat import keras, tf
from tfqat.training import fit


def run_recipe(task, model_dir, paths, stages, init_checkpoint=None):
    keras.utils.set_random_seed(stages[0].seed)
    model = task.build_model()
    if init_checkpoint:
        load_float_weights(model, init_checkpoint)
    results = []
    for stage in stages:
        result = fit(task, model, task.train_dataset, stage, model_dir)
        results.append({"name": stage.name, "steps": result.steps, "seconds": round(result.seconds, 1)})
        model = result.model
    report = {
        "task": task.name,
        "input_size": list(task.config.input_size),
        **paths,
        "stages": results,
        "artifacts": [],
    }
    report_lib.upsert_artifact(report, evaluate_keras(task, model, "keras_float", model_dir))
    report_lib.write_report(model_dir, report)
    print(report_lib.report_markdown(report))
    return report


def evaluate_keras(task, model, name, model_dir):
    from tfqat.tasks.common import keras_predict_fn

    results = task.predict(keras_predict_fn(model))
    metrics = task.metrics(results)
    predictions = os.path.join(model_dir, "predictions", f"{name}.json")
    os.makedirs(os.path.dirname(predictions), exist_ok=True)
    write_results(predictions, results)
    weights = [w for w in model.weights if w.dtype.is_floating]
    data = b"".join(np.asarray(w.numpy(), np.float32).tobytes() for w in weights)
    kernels = [w.numpy() for w in model.weights if w.name.endswith("kernel:0")]
    return report_lib.artifact_row(
        name, os.path.join(model_dir, "checkpoints"), "keras", "float32", data,
        report_lib.kernel_sparsity(kernels), metrics, predictions, model_dir,
    )


def load_float_weights(model, checkpoint):
    """Loads weights a user brings: a tfqat run dir (its float EMA), a TF checkpoint or .h5."""
    if os.path.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(os.path.join(checkpoint, "checkpoints", "float"))
        if latest is None:
            raise FileNotFoundError(f"--init_checkpoint={checkpoint}: no float checkpoint in it")
        tf.train.Checkpoint(ema=model).restore(latest).expect_partial()
    elif checkpoint.endswith((".h5", ".weights.h5")):
        model.load_weights(checkpoint)
    else:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
