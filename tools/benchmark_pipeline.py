"""Is the input pipeline fast enough, and does its memory stay bounded? Measures, in one run,
the images/s the detection training pipeline delivers, its peak RSS, and the images/s of the
training step it feeds.

    python tools/benchmark_pipeline.py --task=detection --model_size=pico --input_size=256,256
    python tools/benchmark_pipeline.py --num_train=1365 --memory_cache_mb=64 --notrain_step

Takes a COCO set (--train_annotations, --train_images) or the synthetic one of --num_train
images. Images are cached in memory when they fit in --memory_cache_mb, else streamed from disk.
Run it alone: the machine's two cores are shared by both sides.
"""

import resource
import time

from absl import app, flags

import tfqat  # noqa: F401
from tfqat import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "detection", ["detection"], "Which pipeline.")
flags.DEFINE_string("train_annotations", None, "COCO JSON of the set (default: synthetic).")
flags.DEFINE_string("train_images", None, "Image folder of the set.")
flags.DEFINE_integer("num_train", 1500, "Synthetic set: training images.", lower_bound=1)
flags.DEFINE_integer(
    "memory_cache_mb", 4096, "Cache decoded images when they fit in this many MiB.", lower_bound=0
)
flags.DEFINE_string("model_size", "pico", "Model size of the training step.")
flags.DEFINE_string("activation", "silu", "Activation of the training step's model.")
flags.DEFINE_list("input_size", ["256", "256"], "height,width")
flags.DEFINE_integer("batch_size", 16, "Batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 2, "Passes over the set before the timing.", lower_bound=1)
flags.DEFINE_integer("batches", 60, "Batches timed for each side (after warmup).", lower_bound=2)
flags.DEFINE_bool("augment", True, "Training augmentation (mosaic, flip, jittered resize).")
flags.DEFINE_bool("train_step", True, "Also time the training step the pipeline feeds.")


def images_per_second(next_batch, batches: int, batch_size: int) -> float:
    next_batch()  # warmup / tracing
    start = time.perf_counter()
    for _ in range(batches):
        next_batch()
    return batches * batch_size / (time.perf_counter() - start)


def peak_rss_mib() -> float:
    """The process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_train_set(size):
    from tfqat.data.coco import load_coco
    from tfqat.data.synthetic import ensure_synthetic

    if FLAGS.train_annotations:
        return load_coco(FLAGS.train_annotations, FLAGS.train_images, FLAGS.task)
    paths = ensure_synthetic(FLAGS.task, num_train=FLAGS.num_train, image_size=max(size))
    return load_coco(paths["train_annotations"], paths["train_images"], FLAGS.task)


def training_step_rate(task, images, targets) -> float:
    from tfqat.tf_compat import keras, tf

    model = task.build_model()
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9, jit_compile=False)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = task.loss(targets, model(images, training=True))["total"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return images_per_second(lambda: step().numpy(), FLAGS.batches // 2, FLAGS.batch_size)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfqat.recipe.checks import check_input_size, check_model_choice

    check_model_choice(FLAGS.task, FLAGS.model_size, FLAGS.activation)
    check_input_size(FLAGS.input_size)
    if bool(FLAGS.train_annotations) != bool(FLAGS.train_images):
        raise app.UsageError("give both --train_annotations and --train_images, or neither")
    from tfqat.data.pipeline import fits_memory_cache
    from tfqat.tasks.detection import DetectionConfig, DetectionTask

    size = tuple(int(v) for v in FLAGS.input_size)
    train = load_train_set(size)
    config = DetectionConfig(
        input_size=size,
        model_size=FLAGS.model_size,
        activation=FLAGS.activation,
        batch_size=FLAGS.batch_size,
        augment=FLAGS.augment,
        memory_cache_mb=FLAGS.memory_cache_mb,
    )
    task = DetectionTask(config, train, train)  # never validates: the val set is not read
    cached = fits_memory_cache(train, size, FLAGS.memory_cache_mb)
    before = peak_rss_mib()

    iterator = iter(task.train_dataset(0))
    # The first pass fills the cache if there is one; time the steady state, as training sees it.
    for _ in range(FLAGS.epochs * task.steps_per_epoch):
        next(iterator)
    pipeline_rate = images_per_second(lambda: next(iterator), FLAGS.batches, FLAGS.batch_size)
    peak = peak_rss_mib()
    decoded_mib = len(train.samples) * size[0] * size[1] * 3 / 2**20
    print(
        f"{len(train.samples)} images, {decoded_mib:.0f} MiB decoded at {size[0]}x{size[1]}, "
        f"--memory_cache_mb={FLAGS.memory_cache_mb}: {'cached' if cached else 'streamed'}; "
        f"pipeline {pipeline_rate:.0f} img/s (the {FLAGS.batches} batches after "
        f"{FLAGS.epochs} epochs); peak RSS {peak:.0f} MiB ({peak - before:+.0f} MiB over the "
        f"{before:.0f} MiB before the pipeline)"
    )
    if FLAGS.train_step:
        step_rate = training_step_rate(task, *next(iterator))
        print(
            f"training step {step_rate:.1f} img/s ({FLAGS.model_size}, {size[0]}x{size[1]}, "
            f"batch {FLAGS.batch_size}): pipeline / step = {pipeline_rate / step_rate:.1f}x"
        )


if __name__ == "__main__":
    cli.run(main)
