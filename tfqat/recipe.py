"""The recipe schema: every flag of `tfqat.train`, defined on any FlagValues.

`tfqat.train` defines them on absl's global FLAGS; `tfqat.evaluate` and `tfqat.export` define
them on a private FlagValues to read a run's `flags.txt` back.
"""

import os

from absl import flags

from tfqat.optimize.prune_defaults import DEFAULT_EXCLUDE

RECIPE_FLAGS = [
    "name",
    "model_dir",
    "task",
    "dataset",
    "train_annotations",
    "train_images",
    "val_annotations",
    "val_images",
    "num_train",
    "num_val",
    "synthetic_seed",
    "exif_transpose",
    "annotation_problems",
    "model_size",
    "activation",
    "input_size",
    "init_checkpoint",
    "stages",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "final_lr_ratio",
    "ema_decay",
    "ema_tau",
    "eval_every",
    "seed",
    "augment",
    "mosaic",
    "jitter",
    "min_box_size",
    "qat_epochs",
    "qat_lr",
    "calibration_images",
    "prune_epochs",
    "prune_lr",
    "target_sparsity",
    "pruning_schedule",
    "pruning_end",
    "prune_exclude",
    "m_by_n",
    "min_output_levels",
    "flip_prob",
    "rotation_prob",
    "rotation",
    "scale_range",
]

# The stage sequences a recipe may run.
STAGE_SEQUENCES = [["float"], ["float", "qat"], ["float", "prune", "pqat"]]

PATH_FLAGS = ["train_annotations", "train_images", "val_annotations", "val_images"]


def define_flags(fv: flags.FlagValues):
    flags.DEFINE_string(
        "name", None, "Recipe name; the default run directory is runs/<name>.", flag_values=fv
    )
    flags.DEFINE_string("model_dir", None, "Run directory (default runs/<name>).", flag_values=fv)
    flags.DEFINE_enum(
        "task", "detection", ["detection", "pose"], "What the model does.", flag_values=fv
    )
    flags.DEFINE_enum(
        "dataset",
        None,
        ["synthetic_detection", "synthetic_pose"],
        "Generated default dataset, used when no annotation paths are given.",
        flag_values=fv,
    )
    flags.DEFINE_string("train_annotations", None, "COCO JSON of the training set.", flag_values=fv)
    flags.DEFINE_string("train_images", None, "Image folder of the training set.", flag_values=fv)
    flags.DEFINE_string("val_annotations", None, "COCO JSON of the validation set.", flag_values=fv)
    flags.DEFINE_string("val_images", None, "Image folder of the validation set.", flag_values=fv)
    flags.DEFINE_integer("num_train", 1500, "Synthetic dataset: training images.", flag_values=fv)
    flags.DEFINE_integer("num_val", 300, "Synthetic dataset: validation images.", flag_values=fv)
    flags.DEFINE_integer("synthetic_seed", 0, "Synthetic dataset: generator seed.", flag_values=fv)
    flags.DEFINE_bool(
        "exif_transpose",
        False,
        "Apply EXIF orientation when decoding. Declared sizes must match either way.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "annotation_problems",
        "error",
        ["error", "warn"],
        "Per-annotation problems stop the run (error) or are dropped and counted (warn).",
        flag_values=fv,
    )
    flags.DEFINE_string("model_size", "n", "Model size (see tfqat/models).", flag_values=fv)
    flags.DEFINE_string("activation", "silu", "Activation: silu, relu6, ...", flag_values=fv)
    flags.DEFINE_list("input_size", ["256", "256"], "Model input height,width.", flag_values=fv)
    flags.DEFINE_string(
        "init_checkpoint",
        None,
        "Float weights to start from (a run dir or prefix).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "stages",
        ["float"],
        "Training stages in order: float, float,qat or float,prune,pqat.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "qat_epochs", 2, "Epochs of the QAT or PQAT stage (and of float_reference).", flag_values=fv
    )
    flags.DEFINE_float(
        "qat_lr",
        0.002,
        "Peak learning rate of the QAT or PQAT stage (and float_reference).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "prune_epochs",
        3,
        "Epochs of the prune stage (and of float_reference_prune).",
        flag_values=fv,
    )
    flags.DEFINE_float("prune_lr", 0.002, "Peak learning rate of the prune stage.", flag_values=fv)
    flags.DEFINE_float(
        "target_sparsity", 0.5, "Fraction of zeros in every pruned kernel.", flag_values=fv
    )
    flags.DEFINE_enum(
        "pruning_schedule",
        "polynomial",
        ["polynomial", "constant"],
        "TF-MOT PolynomialDecay (0 -> target) or ConstantSparsity.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "pruning_end",
        0.6,
        "Fraction of the prune stage after which the target is reached.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "prune_exclude",
        list(DEFAULT_EXCLUDE),
        "Regular expressions on layer names that stay dense.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "m_by_n",
        None,
        "Structured sparsity instead, e.g. 2,4 (then target_sparsity=0.5).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "calibration_images",
        64,
        "Train images (training preprocessing) that calibrate QAT ranges and PTQ.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "min_output_levels",
        32,
        "The int8 export fails if an output uses fewer distinct levels than this "
        "over the calibration images.",
        flag_values=fv,
    )
    flags.DEFINE_integer("epochs", 10, "Epochs of the float stage.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 16, "Training batch size.", flag_values=fv)
    flags.DEFINE_float("lr", 0.01, "Peak learning rate of the float stage.", flag_values=fv)
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Optimizer.", flag_values=fv)
    flags.DEFINE_float("momentum", 0.937, "SGD momentum / AdamW beta_1.", flag_values=fv)
    flags.DEFINE_float(
        "weight_decay", 5e-4, "Weight decay (not on biases and batch norm).", flag_values=fv
    )
    flags.DEFINE_float("warmup_epochs", 1.0, "Linear warmup length.", flag_values=fv)
    flags.DEFINE_float("final_lr_ratio", 0.01, "Cosine schedule ends at lr * this.", flag_values=fv)
    flags.DEFINE_float("ema_decay", 0.9999, "EMA decay of the weights.", flag_values=fv)
    flags.DEFINE_float("ema_tau", 2000.0, "EMA warmup in steps.", flag_values=fv)
    flags.DEFINE_integer(
        "eval_every", 1, "Validate every N epochs (and after the last).", flag_values=fv
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of weights init, shuffling and augmentation.", flag_values=fv
    )
    flags.DEFINE_bool("augment", True, "Training augmentation.", flag_values=fv)
    flags.DEFINE_bool("mosaic", True, "Mosaic augmentation (detection).", flag_values=fv)
    flags.DEFINE_list(
        "jitter", ["0.75", "1.25"], "Jittered-resize scale range (detection).", flag_values=fv
    )
    flags.DEFINE_float(
        "min_box_size",
        1.0,
        "Boxes narrower/shorter than this many input pixels are dropped from targets.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "flip_prob",
        0.5,
        "Pose: probability of mirroring a crop (left/right swapped).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "rotation_prob", 0.6, "Pose: probability of rotating a crop.", flag_values=fv
    )
    flags.DEFINE_float("rotation", 30.0, "Pose: largest crop rotation, degrees.", flag_values=fv)
    flags.DEFINE_list(
        "scale_range", ["0.75", "1.25"], "Pose: crop scale range (augmentation).", flag_values=fv
    )


def check(fv):
    """Contradictory flags fail here, before any work."""
    given = [f for f in PATH_FLAGS if getattr(fv, f)]
    if given and len(given) != len(PATH_FLAGS):
        missing = sorted(set(PATH_FLAGS) - set(given))
        raise ValueError(f"dataset paths are all-or-none; missing: --{', --'.join(missing)}")
    if not given and not fv.dataset:
        raise ValueError("give --dataset=synthetic_* or all of --" + ", --".join(PATH_FLAGS))
    if fv.dataset and fv.dataset != f"synthetic_{fv.task}":
        raise ValueError(f"--dataset={fv.dataset} does not match --task={fv.task}")
    if fv.stages not in STAGE_SEQUENCES:
        choices = " or ".join(",".join(s) for s in STAGE_SEQUENCES)
        raise ValueError(f"--stages={','.join(fv.stages)} is not supported; use {choices}")
    if fv.m_by_n and abs(fv.target_sparsity - int(fv.m_by_n[0]) / int(fv.m_by_n[1])) > 1e-6:
        raise ValueError(
            f"--m_by_n={','.join(fv.m_by_n)} prunes exactly m/n; set --target_sparsity to it"
        )
    if len(fv.input_size) != 2 or any(int(v) % 32 for v in fv.input_size):
        raise ValueError("--input_size must be height,width, both multiples of 32")
    if not (fv.model_dir or fv.name):
        raise ValueError("give --model_dir or --name")


def dataset_paths(fv) -> dict:
    if fv.train_annotations:
        return {f: os.path.abspath(getattr(fv, f)) for f in PATH_FLAGS}
    from tfqat.data.synthetic import DEFAULT_IMAGE_SIZE, ensure_synthetic

    # Detection images are made at the model's input size; pose crops come from full-size
    # synthetic images, whatever the crop size.
    image_size = max(input_size(fv)) if fv.task == "detection" else DEFAULT_IMAGE_SIZE
    return ensure_synthetic(
        fv.task,
        num_train=fv.num_train,
        num_val=fv.num_val,
        seed=fv.synthetic_seed,
        image_size=image_size,
    )


def input_size(fv):
    return tuple(int(v) for v in fv.input_size)


def make_task(fv, train, val):
    if fv.task == "pose":
        from tfqat.tasks.pose import PoseConfig, PoseTask

        config = PoseConfig(
            input_size=input_size(fv),
            model_size=fv.model_size,
            activation=fv.activation,
            batch_size=fv.batch_size,
            augment=fv.augment,
            flip_prob=fv.flip_prob,
            scale_range=tuple(float(v) for v in fv.scale_range),
            rotation_prob=fv.rotation_prob,
            max_rotation=fv.rotation,
            seed=fv.seed,
        )
        return PoseTask(config, train, val)
    from tfqat.tasks.detection import DetectionConfig, DetectionTask

    config = DetectionConfig(
        input_size=input_size(fv),
        model_size=fv.model_size,
        activation=fv.activation,
        batch_size=fv.batch_size,
        augment=fv.augment,
        mosaic=fv.mosaic,
        jitter=tuple(float(v) for v in fv.jitter),
        min_box_size=fv.min_box_size,
        seed=fv.seed,
    )
    return DetectionTask(config, train, val)


def stage_configs(fv, task):
    from tfqat.training import StageConfig

    def stage(name, epochs, lr, warmup_epochs):
        return StageConfig(
            name=name,
            epochs=epochs,
            steps_per_epoch=task.steps_per_epoch,
            learning_rate=lr,
            optimizer=fv.optimizer,
            momentum=fv.momentum,
            weight_decay=fv.weight_decay,
            warmup_epochs=warmup_epochs,
            final_lr_ratio=fv.final_lr_ratio,
            ema_decay=fv.ema_decay,
            ema_tau=fv.ema_tau,
            eval_every=fv.eval_every,
            seed=fv.seed,
        )

    stages = [stage("float", fv.epochs, fv.lr, fv.warmup_epochs)]
    # The float_reference* stages continue the float model with the schedules and data order of
    # the stages after float, so keras_float has trained exactly as long as keras_qat.
    if "prune" in fv.stages:
        stages += [
            stage("prune", fv.prune_epochs, fv.prune_lr, 0.0),
            stage("float_reference_prune", fv.prune_epochs, fv.prune_lr, 0.0),
        ]
    for name in ("qat", "pqat"):
        if name in fv.stages:
            stages += [
                stage(name, fv.qat_epochs, fv.qat_lr, 0.0),
                stage("float_reference", fv.qat_epochs, fv.qat_lr, 0.0),
            ]
    return stages


def pruning_options(fv):
    from tfqat.optimize.prune import PruningOptions

    m_by_n = tuple(int(v) for v in fv.m_by_n) if fv.m_by_n else None
    return PruningOptions(
        target_sparsity=fv.target_sparsity,
        schedule=fv.pruning_schedule,
        end_fraction=fv.pruning_end,
        exclude=tuple(fv.prune_exclude),
        m_by_n=m_by_n,
    )
