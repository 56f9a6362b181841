"""Exports a trained run's models to every deployable file and evaluates each one.

    python -m tfqat.export --model_dir=DIR

Rebuilds the QAT (or PQAT) model and the fair float model from DIR's checkpoints, then writes
what the end of `tfqat.train` writes (README.md, "Run directory"): export/model_float32.tflite,
model_int8.tflite, model_int8_ptq.tflite, model_int8.onnx, openvino/model_int8.xml/.bin,
openvino/model_float.xml/.bin and metadata.json; every file is validated, evaluated on the run's
val set (predictions/<artifact>.json, rows in report.json) and compared across backends.
"""

import os

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfqat import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory written by tfqat.train.")
flags.mark_flag_as_required("model_dir")


def check_exportable(model_dir: str):
    """A run with a finished QAT (or PQAT) stage; cli.InputError naming what is missing."""
    from tfqat.recipe import checks

    stages = checks.run_flags("--model_dir", model_dir).stages
    quantized = [s for s in stages if s in ("qat", "pqat")]
    if not quantized:
        raise cli.InputError(
            f"--model_dir={model_dir}: --stages={','.join(stages)} has no QAT stage, so there is "
            "no int8 model to export"
        )
    if not checks.has_checkpoint(model_dir, quantized[0]):
        raise cli.InputError(f"--model_dir={model_dir}: no checkpoint of its {quantized[0]} stage")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_exportable(os.path.abspath(FLAGS.model_dir))
    from tfqat.evaluate import report as report_lib
    from tfqat.evaluate.artifacts import export_and_evaluate, fail_on
    from tfqat.recipe.run_dir import load_run
    from tfqat.train.checkpoints import restore_export_models

    run = load_run(os.path.abspath(FLAGS.model_dir))
    models = restore_export_models(run.task, run.model_dir, run.stages)
    calibration = run.task.preprocessed_images(run.calibration_images)
    rows, parity, problems = export_and_evaluate(
        run.task, models, run.model_dir, calibration, run.min_output_levels
    )
    report = report_lib.load_report(run.model_dir) or report_lib.new_report(run.task, run.paths, [])
    report["parity"] = parity
    for row in rows:
        report_lib.upsert_artifact(report, row)
    report_lib.write_report(os.path.join(run.model_dir, "report.json"), report)
    print(report_lib.report_markdown(report))
    fail_on(problems)


if __name__ == "__main__":
    cli.run(main)
