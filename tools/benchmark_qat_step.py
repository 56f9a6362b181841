"""What does QAT cost per training step? Times, in one run and interleaved, the training step of
the float model, its QAT model and (with --pqat) its prune-preserving QAT model.

    python tools/benchmark_qat_step.py --flagfile=configs/yolo_synthetic.flags
    python tools/benchmark_qat_step.py --flagfile=configs/pose_synthetic.flags

Takes the recipe's task, model, input and batch size, and the same step as `tfqat.train`
(forward, loss, gradients, optimizer, EMA). Run it alone: the two cores are shared.
`tools/benchmark.py --training` imports `step_seconds` (flags are defined only when run).
"""

import statistics
import time

from absl import app, flags

import tfqat  # noqa: F401
from tfqat import cli

FLAGS = flags.FLAGS


def seconds_per_step(step, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)["total"].numpy()
    return (time.perf_counter() - start) / steps


def step_seconds(task, learning_rate, optimizer, pqat=True, rounds=5, steps=10) -> dict:
    """{"float", "qat"[, "pqat"]: median seconds per training step}: `rounds` interleaved rounds
    of `steps` steps each, on one batch of the task's training pipeline."""
    from tfqat.optimize import qat
    from tfqat.train.checkpoints import QAT_SCHEMES
    from tfqat.train.loop import ModelEMA, StageConfig, make_optimizer, make_train_step
    from tfqat.train.stages import clone_with_weights

    batch = next(iter(task.train_dataset(0)))
    float_model = task.build_model()
    models = {"float": float_model}
    schemes = QAT_SCHEMES if pqat else {"qat": QAT_SCHEMES["qat"]}
    with qat.qat_scope():
        for name, scheme in schemes.items():
            models[name] = qat.quantize(clone_with_weights(float_model), scheme)
        config = StageConfig("benchmark", 1, task.steps_per_epoch, learning_rate, optimizer)
        train_steps = {}
        for name, model in models.items():
            train_steps[name] = make_train_step(
                task, model, make_optimizer(config), ModelEMA(model, 0.9999, 200.0)
            )
            seconds_per_step(train_steps[name], batch, 2)  # tracing and warmup
        times = {name: [] for name in models}
        for _ in range(rounds):
            for name, step in train_steps.items():
                times[name].append(seconds_per_step(step, batch, steps))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfqat.recipe import build
    from tfqat.recipe.checks import check_recipe

    check_recipe(FLAGS)
    paths = build.dataset_paths(FLAGS)
    task = build.make_task(FLAGS, *build.load_datasets(FLAGS, paths))
    median = step_seconds(task, FLAGS.lr, FLAGS.optimizer, FLAGS.pqat, FLAGS.rounds, FLAGS.steps)
    size = "x".join(FLAGS.input_size)
    print(
        f"{FLAGS.task} {FLAGS.model_size} {FLAGS.activation} {size} batch {FLAGS.batch_size}, "
        f"median of {FLAGS.rounds} interleaved rounds of {FLAGS.steps} steps:"
    )
    for name, value in median.items():
        print(f"  {name:6s} {1000 * value:7.1f} ms/step  {value / median['float']:.2f}x float")


def define_flags():
    from tfqat.recipe.flags import define_flags as define_recipe_flags

    define_recipe_flags(FLAGS)
    flags.DEFINE_integer("rounds", 5, "Interleaved rounds; each times every model.")
    flags.DEFINE_integer("steps", 10, "Training steps timed per model and round.")
    flags.DEFINE_bool("pqat", True, "Also time the prune-preserving QAT model.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
