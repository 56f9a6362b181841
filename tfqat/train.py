"""Trains a recipe end to end: data check, training stages, evaluation, report.

    python -m tfqat.train --flagfile=configs/yolo_synthetic.flags [--model_dir=DIR] [--flag=value]

Rerunning with the same --model_dir resumes every stage from its latest checkpoint.
"""

import os
import sys
import time

from absl import app, flags

import tfqat  # noqa: F401  (selects tf_keras before TensorFlow loads)

FLAGS = flags.FLAGS

flags.DEFINE_string("name", None, "Recipe name; the default run directory is runs/<name>.")
flags.DEFINE_string("model_dir", None, "Run directory (default runs/<name>).")
flags.DEFINE_enum("task", "detection", ["detection", "pose"], "What the model does.")
flags.DEFINE_enum("dataset", None, ["synthetic_detection", "synthetic_pose"],
                  "Generated default dataset, used when no annotation paths are given.")
flags.DEFINE_string("train_annotations", None, "COCO JSON of the training set.")
flags.DEFINE_string("train_images", None, "Image folder of the training set.")
flags.DEFINE_string("val_annotations", None, "COCO JSON of the validation set.")
flags.DEFINE_string("val_images", None, "Image folder of the validation set.")
flags.DEFINE_integer("num_train", 1500, "Synthetic dataset: training images.")
flags.DEFINE_integer("num_val", 300, "Synthetic dataset: validation images.")
flags.DEFINE_integer("synthetic_seed", 0, "Synthetic dataset: generator seed.")
flags.DEFINE_bool("exif_transpose", False,
                  "Apply EXIF orientation when decoding. Declared sizes must match either way.")
flags.DEFINE_enum("annotation_problems", "error", ["error", "warn"],
                  "Per-annotation problems stop the run (error) or are dropped and counted (warn).")

flags.DEFINE_string("model_size", "n", "Model size (see tfqat/models).")
flags.DEFINE_string("activation", "silu", "Activation: silu, relu6, ...")
flags.DEFINE_list("input_size", ["256", "256"], "Model input height,width.")
flags.DEFINE_string("init_checkpoint", None, "Float weights to start from (a run dir or prefix).")

flags.DEFINE_list("stages", ["float"], "Training stages in order.")
flags.DEFINE_integer("epochs", 10, "Epochs of the float stage.")
flags.DEFINE_integer("batch_size", 16, "Training batch size.")
flags.DEFINE_float("lr", 0.01, "Peak learning rate of the float stage.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Optimizer.")
flags.DEFINE_float("momentum", 0.937, "SGD momentum / AdamW beta_1.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (not on biases and batch norm).")
flags.DEFINE_float("warmup_epochs", 1.0, "Linear warmup length.")
flags.DEFINE_float("final_lr_ratio", 0.01, "Cosine schedule ends at lr * this.")
flags.DEFINE_float("ema_decay", 0.9999, "EMA decay of the weights.")
flags.DEFINE_float("ema_tau", 2000.0, "EMA warmup in steps.")
flags.DEFINE_integer("eval_every", 1, "Validate every N epochs (and after the last).")
flags.DEFINE_integer("seed", 0, "Seed of weights init, shuffling and augmentation.")

flags.DEFINE_bool("augment", True, "Training augmentation.")
flags.DEFINE_bool("mosaic", True, "Mosaic augmentation (detection).")
flags.DEFINE_list("jitter", ["0.75", "1.25"], "Jittered-resize scale range (detection).")
flags.DEFINE_float("min_box_size", 1.0,
                   "Boxes narrower/shorter than this many input pixels are dropped from targets.")

RECIPE_FLAGS = [
    "name", "model_dir", "task", "dataset", "train_annotations", "train_images",
    "val_annotations", "val_images", "num_train", "num_val", "synthetic_seed", "exif_transpose",
    "annotation_problems", "model_size", "activation", "input_size", "init_checkpoint", "stages",
    "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "warmup_epochs",
    "final_lr_ratio", "ema_decay", "ema_tau", "eval_every", "seed", "augment", "mosaic", "jitter",
    "min_box_size",
]
KNOWN_STAGES = ["float"]
PATH_FLAGS = ["train_annotations", "train_images", "val_annotations", "val_images"]


def check_flags():
    """Contradictory flags fail here, before any work."""
    given = [f for f in PATH_FLAGS if getattr(FLAGS, f)]
    if given and len(given) != len(PATH_FLAGS):
        missing = sorted(set(PATH_FLAGS) - set(given))
        raise app.UsageError(f"dataset paths are all-or-none; missing: --{', --'.join(missing)}")
    if not given and not FLAGS.dataset:
        raise app.UsageError("give --dataset=synthetic_* or all of --" + ", --".join(PATH_FLAGS))
    if FLAGS.dataset and FLAGS.dataset != f"synthetic_{FLAGS.task}":
        raise app.UsageError(f"--dataset={FLAGS.dataset} does not match --task={FLAGS.task}")
    unknown = [s for s in FLAGS.stages if s not in KNOWN_STAGES]
    if unknown or not FLAGS.stages or FLAGS.stages[0] != "float":
        raise app.UsageError(f"--stages must start with float and use only {KNOWN_STAGES}")
    if len(FLAGS.input_size) != 2 or any(int(v) % 32 for v in FLAGS.input_size):
        raise app.UsageError("--input_size must be height,width, both multiples of 32")
    if not (FLAGS.model_dir or FLAGS.name):
        raise app.UsageError("give --model_dir or --name")


def dataset_paths() -> dict:
    if FLAGS.train_annotations:
        return {f: os.path.abspath(getattr(FLAGS, f)) for f in PATH_FLAGS}
    from tfqat.data.synthetic import ensure_synthetic

    return ensure_synthetic(FLAGS.task, num_train=FLAGS.num_train, num_val=FLAGS.num_val,
                            seed=FLAGS.synthetic_seed, image_size=max(input_size()))


def input_size():
    return tuple(int(v) for v in FLAGS.input_size)


def write_flags(model_dir: str):
    from tfqat.fileio import atomic_write

    lines = [FLAGS[name].serialize() for name in RECIPE_FLAGS if FLAGS[name].value is not None]
    lines = [line for line in lines if not line.startswith("--model_dir")]
    lines.append(f"--model_dir={model_dir}")
    atomic_write(os.path.join(model_dir, "flags.txt"), "\n".join(lines) + "\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_flags()
    model_dir = os.path.abspath(FLAGS.model_dir or os.path.join("runs", FLAGS.name))
    os.makedirs(model_dir, exist_ok=True)
    write_flags(model_dir)

    from tfqat.data.coco import load_coco

    paths = dataset_paths()
    problems = FLAGS.annotation_problems
    train = load_coco(paths["train_annotations"], paths["train_images"], FLAGS.task,
                      exif_transpose=FLAGS.exif_transpose, annotation_problems=problems)
    val = load_coco(paths["val_annotations"], paths["val_images"], FLAGS.task,
                    exif_transpose=FLAGS.exif_transpose, annotation_problems=problems)

    from tfqat import runner

    task = make_task(train, val)
    runner.run_recipe(task, model_dir, paths, stage_configs(task), FLAGS.init_checkpoint)


def make_task(train, val):
    from tfqat.tasks.detection import DetectionConfig, DetectionTask

    config = DetectionConfig(
        input_size=input_size(), model_size=FLAGS.model_size, activation=FLAGS.activation,
        batch_size=FLAGS.batch_size, augment=FLAGS.augment, mosaic=FLAGS.mosaic,
        jitter=tuple(float(v) for v in FLAGS.jitter), min_box_size=FLAGS.min_box_size,
        seed=FLAGS.seed,
    )
    return DetectionTask(config, train, val)


def stage_configs(task):
    from tfqat.training import StageConfig

    return [
        StageConfig(
            name="float", epochs=FLAGS.epochs, steps_per_epoch=task.steps_per_epoch,
            learning_rate=FLAGS.lr, optimizer=FLAGS.optimizer, momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay, warmup_epochs=FLAGS.warmup_epochs,
            final_lr_ratio=FLAGS.final_lr_ratio, ema_decay=FLAGS.ema_decay,
            ema_tau=FLAGS.ema_tau, eval_every=FLAGS.eval_every, seed=FLAGS.seed,
        )
    ]


def run():
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
