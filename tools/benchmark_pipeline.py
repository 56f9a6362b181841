"""Is the input pipeline fast enough? Measures, in one run, the images/s the training pipeline
delivers and the images/s of the training step it feeds.

    python tools/benchmark_pipeline.py --task=detection --model_size=pico --input_size=256,256

Uses the synthetic default dataset. Run it alone: the machine's two cores are shared by both.
"""

import time

from absl import app, flags

import tfqat  # noqa: F401
from tfqat import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "detection", ["detection"], "Which pipeline.")
flags.DEFINE_string("model_size", "pico", "Model size of the training step.")
flags.DEFINE_string("activation", "silu", "Activation of the training step's model.")
flags.DEFINE_list("input_size", ["256", "256"], "height,width")
flags.DEFINE_integer("batch_size", 16, "Batch size.", lower_bound=1)
flags.DEFINE_integer("batches", 60, "Batches timed for each side (after warmup).", lower_bound=2)


def images_per_second(next_batch, batches: int, batch_size: int) -> float:
    next_batch()  # warmup / tracing
    start = time.perf_counter()
    for _ in range(batches):
        next_batch()
    return batches * batch_size / (time.perf_counter() - start)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfqat.recipe.checks import check_input_size, check_model_choice

    check_model_choice(FLAGS.task, FLAGS.model_size, FLAGS.activation)
    check_input_size(FLAGS.input_size)
    from tfqat.data.coco import load_coco
    from tfqat.data.synthetic import ensure_synthetic
    from tfqat.tasks.detection import DetectionConfig, DetectionTask
    from tfqat.tf_compat import keras, tf

    size = tuple(int(v) for v in FLAGS.input_size)
    paths = ensure_synthetic(FLAGS.task, image_size=max(size))
    train = load_coco(paths["train_annotations"], paths["train_images"], FLAGS.task)
    val = load_coco(paths["val_annotations"], paths["val_images"], FLAGS.task)
    config = DetectionConfig(
        input_size=size,
        model_size=FLAGS.model_size,
        activation=FLAGS.activation,
        batch_size=FLAGS.batch_size,
    )
    task = DetectionTask(config, train, val)

    iterator = iter(task.train_dataset(0))
    # First pass fills the decode cache; time the steady state, as training sees it.
    for _ in range(task.steps_per_epoch + 1):
        next(iterator)
    pipeline_rate = images_per_second(lambda: next(iterator), FLAGS.batches, FLAGS.batch_size)

    model = task.build_model()
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9, jit_compile=False)
    images, targets = next(iterator)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = task.loss(targets, model(images, training=True))["total"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step_rate = images_per_second(lambda: step().numpy(), FLAGS.batches // 2, FLAGS.batch_size)
    print(
        f"pipeline {pipeline_rate:.0f} img/s, training step {step_rate:.1f} img/s "
        f"({FLAGS.model_size}, {size[0]}x{size[1]}, batch {FLAGS.batch_size}): "
        f"pipeline / step = {pipeline_rate / step_rate:.1f}x"
    )


if __name__ == "__main__":
    cli.run(main)
