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


def find_run_dir(path: str) -> str:
    """The run directory a model path belongs to: the folder above it that holds flags.txt."""
    current = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    while True:
        if os.path.exists(os.path.join(current, "flags.txt")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            raise FileNotFoundError(f"{path} is not inside a tfqat run directory (no flags.txt)")
        current = parent


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model} does not exist")
    from tfqat import runner

    model_dir = find_run_dir(FLAGS.model)
    run = runner.load_run(model_dir, FLAGS.val_annotations, FLAGS.val_images)
    row = runner.evaluate_artifact(run, FLAGS.model)
    output = FLAGS.output or os.path.join(model_dir, "report.json")
    runner.record_artifact(run, row, output)
    metrics = " ".join(f"{k}={v:.4f}" for k, v in row["metrics"].items())
    print(f"{row['name']} ({row['path']}): {metrics}; predictions in {row['predictions']}")


if __name__ == "__main__":
    sys.exit(app.run(main))
