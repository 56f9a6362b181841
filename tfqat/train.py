"""Trains a recipe end to end: data check, training stages, evaluation, report.

    python -m tfqat.train --flagfile=configs/yolo_synthetic.flags [--model_dir=DIR] [--flag=value]

Rerunning with the same --model_dir resumes every stage from its latest checkpoint.
"""

import os
import sys

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfqat import recipe

FLAGS = flags.FLAGS
recipe.define_flags(FLAGS)


def write_flags(model_dir: str):
    from tfqat.fileio import atomic_write

    lines = [
        FLAGS[name].serialize() for name in recipe.RECIPE_FLAGS if FLAGS[name].value is not None
    ]
    lines = [line for line in lines if not line.startswith("--model_dir")]
    lines.append(f"--model_dir={model_dir}")
    atomic_write(os.path.join(model_dir, "flags.txt"), "\n".join(lines) + "\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        recipe.check(FLAGS)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    model_dir = os.path.abspath(FLAGS.model_dir or os.path.join("runs", FLAGS.name))
    os.makedirs(model_dir, exist_ok=True)
    write_flags(model_dir)

    from tfqat.data.coco import load_coco

    paths = recipe.dataset_paths(FLAGS)
    problems = FLAGS.annotation_problems
    train = load_coco(
        paths["train_annotations"],
        paths["train_images"],
        FLAGS.task,
        exif_transpose=FLAGS.exif_transpose,
        annotation_problems=problems,
    )
    val = load_coco(
        paths["val_annotations"],
        paths["val_images"],
        FLAGS.task,
        exif_transpose=FLAGS.exif_transpose,
        annotation_problems=problems,
    )

    from tfqat import runner

    task = recipe.make_task(FLAGS, train, val)
    runner.run_recipe(
        task,
        model_dir,
        paths,
        recipe.stage_configs(FLAGS, task),
        FLAGS.init_checkpoint,
        FLAGS.calibration_images,
        FLAGS.min_output_levels,
        recipe.pruning_options(FLAGS),
    )


def run():
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
