"""Adds export/model_int8_android.tflite and its tflite_int8_android row to a finished run.

    python tools/export_android.py --model_dir=DIR

Builds the Android file from DIR/export/model_int8.tflite (`tfqat.export.android`), validates it
on val images, evaluates it with LiteRT on the run's val set (predictions/tflite_int8_android.json)
and writes its row (size, mAP, latency next to tflite_int8 + numpy post-processing) into
report.json and report.md. Until `python -m tfqat.export` writes the file itself, this is how a
run gets it; then `python tools/check_mediapipe.py --model=DIR/export/model_int8_android.tflite`
checks it in MediaPipe.
"""

import os
import sys

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory with export/model_int8.tflite.")
flags.DEFINE_float("score_threshold", 0.001,
                   "The in-graph NMS score threshold. 0.001 (our COCO evaluation's) keeps the "
                   "file comparable with tflite_int8; a device that shows boxes above 0.25 runs "
                   "faster with 0.25 (fewer NMS candidates), at a lower mAP.")
flags.mark_flag_as_required("model_dir")

VALIDATION_IMAGES = 16


def _fail(message: str) -> int:
    print(f"export_android: {message}", file=sys.stderr)
    return 2


def main(argv):
    if len(argv) > 1:
        return _fail(f"unexpected arguments: {argv[1:]}")
    model_dir = os.path.abspath(FLAGS.model_dir)
    int8 = os.path.join(model_dir, "export", "model_int8.tflite")
    if not os.path.isfile(int8):
        return _fail(f"--model_dir={FLAGS.model_dir}: no {int8} (train or export first)")
    from tfqat import report as report_lib
    from tfqat import runner
    from tfqat.export.android import export_android
    from tfqat.export.android_eval import android_row
    from tfqat.export.android_tail import InGraphNms
    from tfqat.export.tflite_runtime import ExportValidationError

    run = runner.load_run(model_dir)
    if run.task.name != "detection":
        return _fail(f"--model_dir={FLAGS.model_dir} is a {run.task.name} run; the Android file "
                     "is for detectors")
    try:
        path = export_android(os.path.join(model_dir, "export"),
                              run.task.preprocessed_images(VALIDATION_IMAGES, split="val"),
                              InGraphNms(score_threshold=FLAGS.score_threshold))
    except (ExportValidationError, ValueError) as e:
        return _fail(str(e))
    row = android_row(run.task, path, model_dir)
    report = report_lib.load_report(model_dir) or runner.new_report(run.task, run.paths, [])
    report_lib.upsert_artifact(report, row)
    report_lib.write_report(os.path.join(model_dir, "report.json"), report)
    latency = row["latency"]["median_ms"]
    print(f"{path}: {row['size_bytes']} bytes, mAP50-95 {row['metrics']['mAP50_95']:.4f}, "
          f"{latency['tflite_int8_android']} ms (tflite_int8 + numpy post-processing "
          f"{latency['tflite_int8_numpy_postprocess']} ms)")


if __name__ == "__main__":
    sys.exit(app.run(main))
