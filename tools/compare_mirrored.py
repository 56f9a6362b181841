"""Does data-parallel training follow one device? The first training steps of a recipe's float
model on one device and under MirroredStrategy over --replicas logical CPU devices, at the same
global batch, from the same weights and the same images.

    python tools/compare_mirrored.py --flagfile=configs/smoke_yolo.flags --steps=8 --json=OUT

The step is `tfqat.train`'s (forward, loss, all-reduced gradient, optimizer, EMA). Augmentation
is off (`--augment=false` is forced): mosaic mixes the images of one batch, and a replica's
batch is a part of the global one. What still differs is batch normalization, whose batch
statistics each replica computes on its own images; so the comparison runs twice, with batch
normalization training as usual, then frozen (inference mode, `trainable=False`), where the
two must agree to float rounding: that shows the all-reduced loss and gradient are the global
batch's. Prints the total loss of each step, the relative differences and the largest ones;
`--json` writes them.
"""

import json

from absl import app, flags

import tfqat  # noqa: F401
from tfqat import cli
from tfqat.recipe import build
from tfqat.recipe.checks import check_batch_split, check_recipe
from tfqat.recipe.flags import define_flags

FLAGS = flags.FLAGS
define_flags(FLAGS)
flags.DEFINE_integer("replicas", 2, "Logical CPU devices (replicas) of the mirrored run.")
flags.DEFINE_integer("steps", 8, "Training steps compared.")
flags.DEFINE_string("json", None, "Also write the losses and differences here.")


def first_losses(task, config, distribution, initial_weights, steps, frozen_batchnorm):
    """The total loss of the first `steps` training steps of a float model under `distribution`."""
    from tfqat.tf_compat import keras
    from tfqat.train.loop import ModelEMA, make_optimizer, make_train_step

    with distribution.scope():
        model = task.build_model()
        model.set_weights(initial_weights)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = not frozen_batchnorm
        optimizer = make_optimizer(config)
        ema = ModelEMA(model, config.ema_decay, config.ema_tau)
    step = make_train_step(task, model, optimizer, ema, distribution)
    batches = iter(distribution.dataset(task.train_dataset, 0))
    return [float(step(*next(batches))["total"]) for _ in range(steps)]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS.augment = False
    check_recipe(FLAGS)
    check_batch_split(FLAGS.batch_size, FLAGS.replicas)
    from tfqat.tf_compat import keras, tf
    from tfqat.train.distribute import Distribution, split_cpu

    split_cpu(FLAGS.replicas)  # before any other TensorFlow op
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    paths = build.dataset_paths(FLAGS)
    task = build.make_task(FLAGS, *build.load_datasets(FLAGS, paths))
    config = build.stage_configs(FLAGS, task.steps_per_epoch)[0]
    keras.utils.set_random_seed(FLAGS.seed)
    initial_weights = task.build_model().get_weights()
    strategies = {
        "default": Distribution(),
        "mirrored": Distribution(tf.distribute.MirroredStrategy(cpus)),
    }
    results = {}
    for batchnorm in ("per_replica", "frozen"):
        losses = {
            name: first_losses(
                task, config, distribution, initial_weights, FLAGS.steps, batchnorm == "frozen"
            )
            for name, distribution in strategies.items()
        }
        differences = [abs(m - d) / abs(d) for d, m in zip(losses["default"], losses["mirrored"])]
        results[batchnorm] = {**losses, "relative_difference": differences}
        print(f"batch normalization {batchnorm}:")
        print(f"{'step':>6} {'default':>10} {'mirrored':>10} {'rel. diff':>10}")
        for i, (d, m, r) in enumerate(zip(losses["default"], losses["mirrored"], differences)):
            print(f"{i + 1:6d} {d:10.5f} {m:10.5f} {r:10.2e}")
        print(f"  largest relative difference over {FLAGS.steps} steps: {max(differences):.2e}")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    cli.run(main)
