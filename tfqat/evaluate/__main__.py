"""Evaluates a model with pycocotools on a val set and records the row in a report.

    python -m tfqat.evaluate --model=PATH [--val_annotations=JSON --val_images=DIR]
                             [--output=REPORT.json]

PATH is a run directory (its latest float Keras weights) or an exported .tflite, .onnx or
OpenVINO .xml, in its run's export/ or copied out of it (a .tflite carries its metadata, the
others read metadata.json beside them). Without --val_annotations/--val_images the val set the
model was trained with is used. Only the val set is read.

A run's model on the run's own val set: predictions to `<run>/predictions/<artifact>.json`, the
row into the run's report.json. Anything else (another val set, a file outside its run, another
--output) needs --output: the report goes there, the predictions to
`<output stem>_predictions/<artifact>.json`, and no file of the run changes.
"""

import os

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfqat import cli
from tfqat.postprocess.metrics import format_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Run directory, or an exported model file.")
flags.DEFINE_string("val_annotations", None, "COCO JSON to evaluate on (default: the model's).")
flags.DEFINE_string("val_images", None, "Image folder of --val_annotations.")
flags.DEFINE_string(
    "output",
    None,
    "report.json to write (default: the run's; required for another val set or a file outside "
    "its run). Predictions go to <output stem>_predictions/.",
)
flags.mark_flag_as_required("model")
flags.register_multi_flags_validator(
    ["val_annotations", "val_images"],
    lambda v: bool(v["val_annotations"]) == bool(v["val_images"]),
    "--val_annotations and --val_images go together",
)


def evaluate_model(model, task, place) -> dict:
    """The report row of a run directory (its latest float Keras weights) or an exported file."""
    from tfqat.evaluate.artifacts import evaluate_exported, evaluate_keras

    report_dir = os.path.dirname(place.report_path)
    if model.is_run:
        from tfqat.train.checkpoints import latest_float_stage, restore_stage_model

        stage = latest_float_stage(model.model_dir)
        keras_model = restore_stage_model(task, model.model_dir, stage)
        return evaluate_keras(
            task,
            keras_model,
            "keras_float",
            model.model_dir,
            None,
            place.predictions_dir,
            report_dir,
        )
    return evaluate_exported(task, model.path, report_dir, place.predictions_dir, model.kind)


def record_row(model, task, paths: dict, place, report, row: dict):
    """Puts the row into the destination's report (a new one if there is none yet)."""
    from tfqat.evaluate import report as report_lib
    from tfqat.recipe.eval_inputs import recipe_paths

    if report is None:
        known = recipe_paths(model) if place.into_run else (model.run_report() or {})
        train = {name: known.get(name) for name in ("train_annotations", "train_images")}
        report = report_lib.new_report(task, {**train, **paths}, [])
    report_lib.upsert_artifact(report, row)
    report_lib.write_report(place.report_path, report)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfqat.recipe import build, eval_inputs

    # Every check before TensorFlow loads and before any image is decoded.
    model = eval_inputs.eval_model(FLAGS.model)
    own = eval_inputs.is_own_val_set(model, FLAGS.val_annotations, FLAGS.val_images)
    place = eval_inputs.destination(model, own, FLAGS.output)
    paths = eval_inputs.val_paths(model, FLAGS.val_annotations, FLAGS.val_images)
    report = eval_inputs.existing_report(place, paths)
    val_set, labels = eval_inputs.load_val_set(model, paths)
    task = build.make_task(model.options, labels, val_set)  # no train set: the model's labels

    row = evaluate_model(model, task, place)
    record_row(model, task, paths, place, report, row)
    metrics = format_metrics(row["metrics"])
    print(
        f"{row['name']} ({row['path']}): {metrics}; report {place.report_path}, predictions in "
        f"{os.path.join(os.path.dirname(place.report_path), row['predictions'])}"
    )


if __name__ == "__main__":
    cli.run(main)
