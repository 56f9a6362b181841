"""The recipe schema: every flag of `python -m tfqat.train`, defined on any FlagValues.

`tfqat.train` defines them on absl's global FLAGS; `tfqat.recipe.run_dir` defines them on a
private FlagValues to read a run's `flags.txt` back, `flags_from_text` to read the recipe an
exported file carries.
"""

from absl import flags

from tfqat.optimize.prune_defaults import DEFAULT_EXCLUDE

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
    flags.DEFINE_enum(
        "qat_activation_quantizer",
        "moving_average",
        ["moving_average", "last_value", "all_values"],
        "QAT activation ranges: TF-MOT's MovingAverageQuantizer (EMA of each batch's min/max), "
        "LastValueQuantizer (each batch's) or AllValuesQuantizer (over every batch).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "qat_freeze_bn_after",
        1.0,
        "Fraction of the QAT or PQAT stage's steps after which batch norm uses and keeps its "
        "moving statistics (1: never).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "qat_freeze_ranges_after",
        1.0,
        "Fraction of the QAT or PQAT stage's steps after which activation ranges stop "
        "updating (1: never).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "qat_distillation",
        0.0,
        "Weight of output distillation in the QAT or PQAT stage: the model also learns the "
        "float model's outputs (class scores, box distributions, heatmaps) on each batch "
        "(0: off).",
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
    flags.DEFINE_integer(
        "memory_cache_mb",
        4096,
        "Detection: training images, decoded and letterboxed, are cached in memory when they "
        "fit in this many MiB; a larger set streams from disk (same batches, bounded memory).",
        lower_bound=0,
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


def recipe_flag_names() -> list[str]:
    """Every recipe flag, in definition order: what flags.txt records."""
    fv = flags.FlagValues()
    define_flags(fv)
    return list(fv)


def flags_from_text(text: str) -> flags.FlagValues:
    """The recipe flags of a flagfile's text (a .tflite's metadata "recipe" is its run's
    flags.txt), on a private FlagValues. Raises flags.Error on a flag it does not know."""
    options = flags.FlagValues()
    define_flags(options)
    lines = [line.strip() for line in text.splitlines()]
    options(["tfqat", *(line for line in lines if line and not line.startswith("#"))])
    return options
