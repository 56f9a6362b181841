"""Trains a recipe end to end: data check, training stages, export, evaluation, report.

    python -m tfqat.train --flagfile=configs/yolo_synthetic.flags [--model_dir=DIR] [--flag=value]

Rerunning with the same --model_dir resumes every stage from its latest checkpoint; flags that
differ from its flags.txt stop the rerun unless --overwrite_flags accepts them.
"""

import os
import sys

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfqat import cli
from tfqat.recipe import build, run_dir
from tfqat.recipe import flags as recipe_flags
from tfqat.recipe.checks import check_recipe

FLAGS = flags.FLAGS
recipe_flags.define_flags(FLAGS)
# Not a recipe flag (flags.txt never records it): it accepts one rerun's changes.
flags.DEFINE_bool(
    "overwrite_flags",
    False,
    "Rerun an existing --model_dir under flags that differ from its flags.txt.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_recipe(FLAGS)
    model_dir = os.path.abspath(FLAGS.model_dir or os.path.join("runs", FLAGS.name))
    run_dir.check_rerun(FLAGS, model_dir, FLAGS.overwrite_flags)
    paths = build.dataset_paths(FLAGS)
    # Both annotation files, then every image: nothing is written before the datasets are valid.
    datasets = build.load_datasets(FLAGS, paths)
    os.makedirs(model_dir, exist_ok=True)
    run_dir.write_flags(FLAGS, model_dir)

    task = build.make_task(FLAGS, *datasets)

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
        build.qat_options(FLAGS),
    )


def run():
    cli.run(main)


if __name__ == "__main__":
    sys.exit(run())
