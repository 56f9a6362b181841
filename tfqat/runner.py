"""Runs a recipe's stages, evaluates its artifacts and keeps the run's report (CONTRACT.md).

`tfqat.train` calls `run_recipe`; `tfqat.evaluate` calls `load_run` + `evaluate_artifact`.
"""

import dataclasses
import os

import numpy as np
from absl import flags

from tfqat import recipe
from tfqat import report as report_lib
from tfqat.exporting import evaluate_exported, evaluated_row, export_and_evaluate, fail_on
from tfqat.tf_compat import keras, tf
from tfqat.training import fit


@dataclasses.dataclass
class Run:
    model_dir: str
    options: flags.FlagValues  # the recipe's flags, as in flags.txt
    task: object
    paths: dict


def run_recipe(
    task,
    model_dir,
    paths,
    stages,
    init_checkpoint=None,
    calibration_images=64,
    min_output_levels=32,
    pruning=None,
):
    """Trains every stage, then evaluates (and, after QAT, exports) what they produced.

    `pruning` (prune.PruningOptions) configures the prune stage when `stages` has one.
    """
    keras.utils.set_random_seed(stages[0].seed)
    by_name = {stage.name: stage for stage in stages}
    model = task.build_model()
    if init_checkpoint:
        load_float_weights(model, init_checkpoint)
    records = []

    def train(stage_name, stage_model, epoch_summaries=None):
        result = fit(
            task,
            stage_model,
            task.train_dataset,
            by_name[stage_name],
            model_dir,
            epoch_summaries=epoch_summaries,
        )
        records.append(
            {"name": stage_name, "steps": result.steps, "seconds": round(result.seconds, 1)}
        )
        return result

    float_stage = train("float", model)
    trained = {"keras_float": float_stage}  # artifact name -> StageResult
    quantize_stage = "pqat" if "pqat" in by_name else "qat" if "qat" in by_name else None
    if quantize_stage:
        from tfqat.optimize import qat

        calibration = task.preprocessed_images(calibration_images)
        base = float_stage.model
        if "prune" in by_name:
            base = train_pruned(train, base, pruning, by_name["prune"].total_steps)
        scheme = "prune_preserve" if quantize_stage == "pqat" else "default"
        with qat.qat_scope():
            qat_model = qat.quantize(clone_with_weights(base), scheme)
            qat.calibrate(qat_model, base, calibration)
            trained["keras_qat"] = train(quantize_stage, qat_model, quantizer_range_summaries)
        reference = float_stage
        for name in ("float_reference_prune", "float_reference"):
            if name in by_name:
                reference = train(name, clone_with_weights(reference.model))
        trained["keras_float"] = reference
    models = {name: result.model for name, result in trained.items()}
    report = new_report(task, paths, records)
    for name, result in trained.items():
        # A stage that validated its final model now hands over those predictions.
        report_lib.upsert_artifact(
            report, evaluate_keras(task, result.model, name, model_dir, result.val_results)
        )
    report_path = os.path.join(model_dir, "report.json")
    report_lib.write_report(report_path, report)  # kept if an export fails
    problems = []
    if "keras_qat" in models:
        rows, report["parity"], problems = export_and_evaluate(
            task, models, model_dir, calibration, min_output_levels
        )
        for row in rows:
            report_lib.upsert_artifact(report, row)
        report_lib.write_report(report_path, report)
    print(report_lib.report_markdown(report))
    fail_on(problems)
    return report


def train_pruned(train, float_model, options, stage_steps):
    """The prune stage: a copy of the float model pruned to the target, returned stripped.

    Fails (PruningTargetNotReached) rather than hand a less sparse model to PQAT.
    """
    from tfqat.optimize import prune

    pruned = prune.prune_for_stage(clone_with_weights(float_model), options, stage_steps)
    prune.start_pruning(pruned)
    trained = train("prune", pruned, sparsity_summaries).model  # EMA copy, with the trained masks
    prune.apply_masks(trained)
    prune.check_sparsity(trained, options.target_sparsity, options.exclude, options.m_by_n)
    return prune.strip(trained)


def sparsity_summaries(model, step, writer):
    """TensorBoard: each pruned layer's mask sparsity (as TF-MOT's PruningSummaries logs it).

    PruningSummaries itself reads `model.optimizer`, which a custom loop leaves unset.
    """
    from tfqat.optimize import prune

    sparsity = prune.mask_sparsity(model)
    with writer.as_default(step=step):
        for name, value in sparsity.items():
            tf.summary.scalar(f"sparsity/{name}", value)
        tf.summary.scalar(
            "sparsity/mean_over_pruned_layers", float(np.mean(list(sparsity.values())))
        )


def clone_with_weights(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def quantizer_range_summaries(model, step, writer):
    """TensorBoard: every QAT quantizer's range, to watch ranges settle (or explode)."""
    from tfqat.optimize import qat

    with writer.as_default(step=step):
        for name, (low, high) in qat.quantizer_ranges(model).items():
            tf.summary.scalar(f"quantizer_range/{name}/min", low)
            tf.summary.scalar(f"quantizer_range/{name}/max", high)


def new_report(task, paths, stages):
    return {
        "task": task.name,
        "input_size": list(task.config.input_size),
        **paths,
        "stages": stages,
        "artifacts": [],
    }


def evaluate_keras(task, model, name, model_dir, results=None):
    """A Keras model's row; a QAT model's precision is "int8-simulated" (fake-quantized float).

    `results`: the model's COCO results on the val set if already predicted, else it is run.
    """
    from tfqat.tasks.common import keras_predict_fn

    weights = [w.numpy() for w in model.weights if w.dtype.is_floating]
    data = b"".join(np.asarray(w, np.float32).tobytes() for w in weights)
    kernels = [w.numpy() for w in model.weights if w.name.endswith("kernel:0")]
    precision = "int8-simulated" if name == "keras_qat" else "float32"
    return evaluated_row(
        task,
        keras_predict_fn(model),
        name,
        os.path.join(model_dir, "checkpoints"),
        "keras",
        precision,
        data,
        report_lib.kernel_sparsity(kernels),
        model_dir,
        results,
    )


def load_run(model_dir, val_annotations=None, val_images=None) -> Run:
    """Rebuilds a run's task from its flags.txt, optionally on another val set."""
    from tfqat.data.coco import load_coco

    options = flags.FlagValues()
    recipe.define_flags(options)
    options(["tfqat", f"--flagfile={os.path.join(model_dir, 'flags.txt')}"])
    report = report_lib.load_report(model_dir)
    keys = recipe.PATH_FLAGS
    paths = {k: report[k] for k in keys} if report else recipe.dataset_paths(options)
    if val_annotations:
        paths.update(
            val_annotations=os.path.abspath(val_annotations), val_images=os.path.abspath(val_images)
        )
    datasets = [
        load_coco(
            paths[f"{split}_annotations"],
            paths[f"{split}_images"],
            options.task,
            exif_transpose=options.exif_transpose,
            annotation_problems=options.annotation_problems,
        )
        for split in ("train", "val")
    ]
    return Run(model_dir, options, recipe.make_task(options, *datasets), paths)


def evaluate_artifact(run: Run, path: str) -> dict:
    """Evaluates a run directory (its latest Keras weights) or an exported file of it."""
    if os.path.isdir(path):
        stage = latest_stage(run)
        model = restore_stage_model(run, stage)
        return evaluate_keras(run.task, model, "keras_float", run.model_dir)
    return evaluate_exported(run.task, path, run.model_dir)


def latest_stage(run: Run) -> str:
    """The last float stage with a checkpoint (float_reference, else float)."""
    for stage in ("float_reference", "float"):
        if tf.train.latest_checkpoint(os.path.join(run.model_dir, "checkpoints", stage)):
            return stage
    raise FileNotFoundError(f"{run.model_dir}: no checkpoint of any stage yet")


def restore_stage_model(run: Run, stage: str):
    model = run.task.build_model()
    latest = tf.train.latest_checkpoint(os.path.join(run.model_dir, "checkpoints", stage))
    tf.train.Checkpoint(ema=model).restore(latest).expect_partial()
    return model


def restore_export_models(run: Run) -> dict:
    """{"keras_float", "keras_qat"} of a finished QAT or PQAT run, from its checkpoints."""
    from tfqat.optimize import qat

    stage = next((s for s in ("pqat", "qat") if s in run.options.stages), None)
    if stage is None:
        raise ValueError(
            f"{run.model_dir}: --stages={','.join(run.options.stages)} has no QAT "
            "stage, so there is no int8 model to export"
        )
    latest = tf.train.latest_checkpoint(os.path.join(run.model_dir, "checkpoints", stage))
    if latest is None:
        raise FileNotFoundError(f"{run.model_dir}: no checkpoint of the {stage} stage yet")
    with qat.qat_scope():
        qat_model = qat.quantize(
            run.task.build_model(), "prune_preserve" if stage == "pqat" else "default"
        )
    tf.train.Checkpoint(ema=qat_model).restore(latest).expect_partial()
    return {"keras_float": restore_stage_model(run, latest_stage(run)), "keras_qat": qat_model}


def record_artifact(run: Run, row: dict, output: str):
    report = report_lib.load_report(run.model_dir) or new_report(run.task, run.paths, [])
    report.update(run.paths)
    report_lib.upsert_artifact(report, row)
    report_lib.write_report(output, report)


def load_float_weights(model, checkpoint):
    """Loads weights a user brings: a tfqat run dir (its float EMA), a TF checkpoint or .h5."""
    if os.path.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(os.path.join(checkpoint, "checkpoints", "float"))
        if latest is None:
            raise FileNotFoundError(f"--init_checkpoint={checkpoint}: no float checkpoint in it")
        tf.train.Checkpoint(ema=model).restore(latest).expect_partial()
    elif checkpoint.endswith(".h5"):
        model.load_weights(checkpoint)
    else:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
