"""What does QAT cost per training step? Times, in one run and interleaved, the training step of
the float model, its QAT model and (with --pqat) its prune-preserving QAT model.

    python tools/benchmark_qat_step.py --flagfile=configs/yolo_synthetic.flags
    python tools/benchmark_qat_step.py --flagfile=configs/pose_synthetic.flags

Takes the recipe's task, model, input and batch size, and the same step as `tfqat.train`
(forward, loss, gradients, optimizer, EMA). Run it alone: the two cores are shared.
"""

import statistics
import time

from absl import app, flags

import tfqat  # noqa: F401
from tfqat import cli
from tfqat.recipe import build
from tfqat.recipe.checks import check_recipe
from tfqat.recipe.flags import define_flags

FLAGS = flags.FLAGS
define_flags(FLAGS)
flags.DEFINE_integer("rounds", 5, "Interleaved rounds; each times every model.")
flags.DEFINE_integer("steps", 10, "Training steps timed per model and round.")
flags.DEFINE_bool("pqat", True, "Also time the prune-preserving QAT model.")


def seconds_per_step(step, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)["total"].numpy()
    return (time.perf_counter() - start) / steps


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_recipe(FLAGS)
    from tfqat.optimize import qat
    from tfqat.train.checkpoints import QAT_SCHEMES
    from tfqat.train.loop import ModelEMA, StageConfig, make_optimizer, make_train_step
    from tfqat.train.stages import clone_with_weights

    paths = build.dataset_paths(FLAGS)
    task = build.make_task(FLAGS, *build.load_datasets(FLAGS, paths))
    batch = next(iter(task.train_dataset(0)))
    float_model = task.build_model()
    models = {"float": float_model}
    schemes = QAT_SCHEMES if FLAGS.pqat else {"qat": QAT_SCHEMES["qat"]}
    with qat.qat_scope():
        for name, scheme in schemes.items():
            models[name] = qat.quantize(clone_with_weights(float_model), scheme)
        config = StageConfig("benchmark", 1, task.steps_per_epoch, FLAGS.lr, FLAGS.optimizer)
        steps = {}
        for name, model in models.items():
            steps[name] = make_train_step(
                task, model, make_optimizer(config), ModelEMA(model, 0.9999, 200.0)
            )
            seconds_per_step(steps[name], batch, 2)  # tracing and warmup
        times = {name: [] for name in models}
        for _ in range(FLAGS.rounds):
            for name, step in steps.items():
                times[name].append(seconds_per_step(step, batch, FLAGS.steps))
    median = {name: statistics.median(t) for name, t in times.items()}
    size = "x".join(FLAGS.input_size)
    print(
        f"{FLAGS.task} {FLAGS.model_size} {FLAGS.activation} {size} batch {FLAGS.batch_size}, "
        f"median of {FLAGS.rounds} interleaved rounds of {FLAGS.steps} steps:"
    )
    for name, value in median.items():
        print(f"  {name:6s} {1000 * value:7.1f} ms/step  {value / median['float']:.2f}x float")


if __name__ == "__main__":
    cli.run(main)
