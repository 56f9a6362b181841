"""Evaluates a model with pycocotools and records it in its run's report.

    python -m tfqat.evaluate --model=PATH [--val_annotations=JSON --val_images=DIR]
                             [--output=report.json]

PATH is a run directory (its latest Keras checkpoint), or an exported `.tflite` file of a run
(`<run>/export/...`). Without --val_annotations/--val_images the run's own val set is used.
The predictions go to `<run>/predictions/<artifact>.json` and the metrics into the report.
"""

import os
import sys

from absl import app, flags

import tfqat  # noqa: F401

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Run directory, or an exported model file of a run.")
flags.DEFINE_string("val_annotations", None, "COCO JSON to evaluate on (default: the run's).")
flags.DEFINE_string("val_images", None, "Image folder of --val_annotations.")
flags.DEFINE_string("output", None, "report.json to update (default: the run's report.json).")
flags.mark_flag_as_required("model")
flags.register_multi_flags_validator(
    ["val_annotations", "val_images"],
    lambda v: bool(v["val_annotations"]) == bool(v["val_images"]),
    "--val_annotations and --val_images go together",
)


def evaluate_model(run, path: str) -> dict:
    """The report row of a run directory (its latest float Keras weights) or an exported file."""
    from tfqat.evaluate.artifacts import evaluate_exported, evaluate_keras
    from tfqat.train.checkpoints import latest_float_stage, restore_stage_model

    if os.path.isdir(path):
        stage = latest_float_stage(run.model_dir)
        model = restore_stage_model(run.task, run.model_dir, stage)
        return evaluate_keras(run.task, model, "keras_float", run.model_dir)
    return evaluate_exported(run.task, path, run.model_dir)


def record_row(run, row: dict, output: str):
    """Puts the row into the report at `output` (made from the run's report when missing)."""
    from tfqat.evaluate import report as report_lib

    report = report_lib.load_report(run.model_dir) or report_lib.new_report(run.task, run.paths, [])
    report.update(run.paths)
    report_lib.upsert_artifact(report, row)
    report_lib.write_report(output, report)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model} does not exist")
    from tfqat.recipe.run_dir import find_run_dir, load_run

    model_dir = find_run_dir(FLAGS.model)
    run = load_run(model_dir, FLAGS.val_annotations, FLAGS.val_images)
    row = evaluate_model(run, FLAGS.model)
    output = FLAGS.output or os.path.join(model_dir, "report.json")
    record_row(run, row, output)
    metrics = " ".join(f"{k}={v:.4f}" for k, v in row["metrics"].items())
    print(f"{row['name']} ({row['path']}): {metrics}; predictions in {row['predictions']}")


if __name__ == "__main__":
    sys.exit(app.run(main))
