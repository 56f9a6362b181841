"""Trains a recipe end to end: data check, training stages, export, evaluation, report.

    python -m tfqat.train --flagfile=configs/yolo_synthetic.flags [--model_dir=DIR] [--flag=value]
        [--strategy=default|mirrored|multi_worker [--cluster_resolver=tf_config|slurm]]

Rerunning with the same --model_dir resumes every stage from its latest checkpoint; flags that
differ from its flags.txt stop the rerun unless --overwrite_flags accepts them. Under a
strategy the chief alone writes the run directory; every worker resumes from its checkpoints.
"""

import contextlib
import multiprocessing
import os
import sys

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)
from tfqat import cli
from tfqat.recipe import build, run_dir
from tfqat.recipe import flags as recipe_flags
from tfqat.recipe.checks import check_batch_split, check_distribution, check_ema, check_recipe

FLAGS = flags.FLAGS
recipe_flags.define_flags(FLAGS)
# Not a recipe flag (flags.txt never records it): it accepts one rerun's changes.
flags.DEFINE_bool(
    "overwrite_flags",
    False,
    "Rerun an existing --model_dir under flags that differ from its flags.txt.",
)
# How the run is spread over devices, not what it trains: not recipe flags either (flags.txt does
# not record them, and a run may resume under another strategy).
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker"],
    "tf.distribute strategy: default (one device), mirrored (every GPU of this machine, or "
    "--cpu_replicas logical CPUs), multi_worker (MultiWorkerMirroredStrategy over a cluster).",
)
flags.DEFINE_enum(
    "cluster_resolver",
    "tf_config",
    ["tf_config", "slurm"],
    "--strategy=multi_worker: the cluster from the TF_CONFIG variable, or from Slurm's.",
)
flags.DEFINE_integer(
    "cpu_replicas",
    1,
    "Split the CPU into this many logical devices (--strategy=mirrored on a machine without "
    "GPUs, to test data-parallel training; they share the same cores).",
)
flags.DEFINE_float(
    "collective_timeout",
    0.0,
    "--strategy=multi_worker: seconds an all-reduce may wait for the other workers before the "
    "run stops (0: no limit; a dead worker is found by TensorFlow's heartbeats either way). "
    "Must exceed the chief's longest validation. Costs a thread per all-reduce for that long.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_recipe(FLAGS)
    check_distribution(FLAGS)
    distribution = start_distribution() if FLAGS.strategy != "default" else None
    model_dir = os.path.abspath(FLAGS.model_dir or os.path.join("runs", FLAGS.name))
    run_dir.check_rerun(FLAGS, model_dir, FLAGS.overwrite_flags)
    paths = build.dataset_paths(FLAGS)
    # Both annotation files, then every image: nothing is written before the datasets are valid.
    datasets = build.load_datasets(FLAGS, paths)
    task = build.make_task(FLAGS, *datasets)
    stages = build.stage_configs(FLAGS, task.steps_per_epoch)
    check_ema(stages)
    if distribution is None or distribution.is_chief:
        os.makedirs(model_dir, exist_ok=True)
        run_dir.write_flags(FLAGS, model_dir)

    from tfqat.recipe.run import run_recipe

    with contextlib.ExitStack() as workers:
        if distribution is not None:
            workers.enter_context(distribution.stop_on_peer_failure())
            workers.enter_context(distribution.end_together())
        run_recipe(
            task,
            model_dir,
            paths,
            stages,
            FLAGS.init_checkpoint,
            FLAGS.calibration_images,
            FLAGS.min_output_levels,
            build.pruning_options(FLAGS),
            build.qat_options(FLAGS),
            distribution,
        )


def start_distribution():
    """The Distribution of --strategy, before any other TensorFlow op (or MultiWorkerMirrored-
    Strategy cannot start). --strategy=default needs none: mistakes found later stay one line."""
    from tfqat.train.distribute import make_strategy

    if FLAGS.strategy == "multi_worker":
        # A forked child of a worker (OpenVINO's telemetry sends each event from one) can
        # deadlock on a lock that a gRPC thread held at the fork, and Python's exit waits for it.
        multiprocessing.set_start_method("spawn", force=True)
    distribution = make_strategy(
        FLAGS.strategy, FLAGS.cluster_resolver, FLAGS.cpu_replicas, FLAGS.collective_timeout
    )
    check_batch_split(FLAGS.batch_size, distribution.replicas)
    return distribution


def run():
    cli.run(main)


if __name__ == "__main__":
    sys.exit(run())
