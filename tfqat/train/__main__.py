"""Trains a recipe end to end: data check, training stages, export, evaluation, report.

    python -m tfqat.train --flagfile=configs/yolo_synthetic.flags [--model_dir=DIR] [--flag=value]

Rerunning with the same --model_dir resumes every stage from its latest checkpoint.
"""

import os
import sys

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfqat.recipe import build, run_dir
from tfqat.recipe import flags as recipe_flags

FLAGS = flags.FLAGS
recipe_flags.define_flags(FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        recipe_flags.check(FLAGS)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    model_dir = os.path.abspath(FLAGS.model_dir or os.path.join("runs", FLAGS.name))
    os.makedirs(model_dir, exist_ok=True)
    run_dir.write_flags(FLAGS, model_dir)

    paths = build.dataset_paths(FLAGS)
    task = build.make_task(FLAGS, *build.load_datasets(FLAGS, paths))

    from tfqat.recipe.run import run_recipe

    run_recipe(
        task,
        model_dir,
        paths,
        build.stage_configs(FLAGS, task.steps_per_epoch),
        FLAGS.init_checkpoint,
        FLAGS.calibration_images,
        FLAGS.min_output_levels,
        build.pruning_options(FLAGS),
    )


def run():
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
