"""Every recipe flag and path, checked before any data is read or any file is written.

`check_recipe(fv)` raises app.UsageError naming the flag when a value cannot run (through
`tfqat.cli`: one line, exit status 2), and cli.InputError naming the file when a path is not
what the recipe needs (exit status 1). Nothing here imports TensorFlow: a mistake costs a
fraction of a second, and its line is all the command prints.
"""

import contextlib
import dataclasses
import json
import math
import os
import re

import numpy as np
from absl import app, flags

from tfqat.cli import InputError
from tfqat.data.images import IMAGE_EXTENSIONS, first_image_file
from tfqat.models import pose_spec, yolo_spec
from tfqat.models.activations import ACTIVATIONS
from tfqat.recipe.flags import PATH_FLAGS, STAGE_SEQUENCES, flags_from_text
from tfqat.recipe.run_dir import FLAGS_FILE, read_flags

# --task -> the sizes of its model family.
MODEL_SIZES = {"detection": yolo_spec.SIZES, "pose": pose_spec.SIZES}
# Both input sides must be multiples of the largest stride (32) of either family.
INPUT_MULTIPLE = max(yolo_spec.STRIDES)


def check_recipe(fv):
    """Raises on the first flag (app.UsageError) or path (cli.InputError) a run cannot use."""
    check_combinations(fv)
    check_model_choice(fv.task, fv.model_size, fv.activation)
    check_numbers(fv)
    check_paths(fv)


# === Flags ===


def check_combinations(fv):
    """Flags that contradict each other or are missing."""
    given = [f for f in PATH_FLAGS if getattr(fv, f)]
    if given and len(given) != len(PATH_FLAGS):
        missing = sorted(set(PATH_FLAGS) - set(given))
        raise app.UsageError(f"dataset paths are all-or-none; missing: --{', --'.join(missing)}")
    if not given and not fv.dataset:
        raise app.UsageError("give --dataset=synthetic_* or all of --" + ", --".join(PATH_FLAGS))
    if fv.dataset and fv.dataset != f"synthetic_{fv.task}":
        raise app.UsageError(f"--dataset={fv.dataset} does not match --task={fv.task}")
    if fv.stages not in STAGE_SEQUENCES:
        choices = " or ".join(",".join(s) for s in STAGE_SEQUENCES)
        raise app.UsageError(f"--stages={','.join(fv.stages)} is not supported; use {choices}")
    if not (fv.model_dir or fv.name):
        raise app.UsageError("give --model_dir or --name")


def check_model_choice(task: str, model_size: str, activation: str):
    """--model_size must be a size of the task's model family, --activation one it offers."""
    sizes = MODEL_SIZES[task]
    if model_size not in sizes:
        raise app.UsageError(
            f"--model_size={model_size} is not a {task} model size; use one of "
            f"{', '.join(sorted(sizes))}"
        )
    if activation not in ACTIVATIONS:
        choices = ", ".join(sorted(ACTIVATIONS))
        raise app.UsageError(f"--activation={activation} is not supported; use one of {choices}")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric flag may take; None leaves that side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        below = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        above = self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        )
        return not (below or above)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


AT_LEAST_ONE = Range(1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)


def numeric_rules(fv) -> dict[str, Range]:
    """Flag -> the values a run can use. Flags of stages that do not run are not checked."""
    rules = {
        "epochs": AT_LEAST_ONE,
        "lr": POSITIVE,
        "batch_size": AT_LEAST_ONE,
        "eval_every": AT_LEAST_ONE,
        "seed": NON_NEGATIVE,
        "momentum": Range(0, 1, high_open=True),
        "weight_decay": NON_NEGATIVE,
        "warmup_epochs": NON_NEGATIVE,
        "final_lr_ratio": PROBABILITY,
        "ema_decay": Range(0, 1, high_open=True),
        "ema_tau": POSITIVE,
        "min_box_size": NON_NEGATIVE,
    }
    if not fv.train_annotations:
        rules.update(num_train=AT_LEAST_ONE, num_val=AT_LEAST_ONE, synthetic_seed=NON_NEGATIVE)
    if fv.task == "pose":
        rules.update(flip_prob=PROBABILITY, rotation_prob=PROBABILITY, rotation=Range(0, 180))
    if "qat" in fv.stages or "pqat" in fv.stages:
        rules.update(
            qat_epochs=AT_LEAST_ONE,
            qat_lr=POSITIVE,
            calibration_images=AT_LEAST_ONE,
            min_output_levels=Range(1, 256),
            qat_freeze_bn_after=Range(0, 1),
            qat_freeze_ranges_after=Range(0, 1),
            qat_distillation=NON_NEGATIVE,
        )
    if "prune" in fv.stages:
        rules.update(
            prune_epochs=AT_LEAST_ONE,
            prune_lr=POSITIVE,
            target_sparsity=Range(0, 1, low_open=True, high_open=True),
            pruning_end=Range(0, 1, low_open=True),
        )
    return rules


def check_numbers(fv):
    """Every numeric flag in its range, and the flags that hold two numbers."""
    for name, allowed in numeric_rules(fv).items():
        if getattr(fv, name) not in allowed:
            raise app.UsageError(f"--{name}={getattr(fv, name)} must be {allowed}")
    check_input_size(fv.input_size)
    for name in ("jitter", "scale_range"):
        low, high = _pair(name, getattr(fv, name), float, "low,high")
        if not 0 < low <= high:
            raise app.UsageError(f"--{name}={low},{high} must be low,high with 0 < low <= high")
    if "prune" in fv.stages:
        _check_pruning(fv)


def check_input_size(values: list[str]):
    """--input_size: height,width, both positive multiples of INPUT_MULTIPLE."""
    height, width = _pair("input_size", values, int, "height,width")
    if min(height, width) <= 0 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise app.UsageError(
            f"--input_size={height},{width}: height and width must be positive multiples of "
            f"{INPUT_MULTIPLE}"
        )


def _check_pruning(fv):
    for pattern in fv.prune_exclude:
        try:
            re.compile(pattern)
        except re.error as e:
            message = f"--prune_exclude: {pattern!r} is not a regular expression: {e}"
            raise app.UsageError(message) from e
    if fv.m_by_n:
        m, n = _pair("m_by_n", fv.m_by_n, int, "m,n")
        if not 0 < m < n:
            raise app.UsageError(f"--m_by_n={m},{n} must be m,n with 0 < m < n (e.g. 2,4)")
        if abs(fv.target_sparsity - m / n) > 1e-6:
            raise app.UsageError(
                f"--m_by_n={m},{n} prunes exactly m/n; set --target_sparsity={m / n:g}"
            )


def _pair(name: str, values: list[str], kind, shape: str) -> tuple:
    """The two numbers of a list flag; app.UsageError naming the flag otherwise."""
    values = list(values)
    try:
        pair = tuple(kind(v) for v in values)
    except ValueError:
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        kind_name = "integers" if kind is int else "numbers"
        raise app.UsageError(f"--{name}={','.join(values)} must be {shape}, two {kind_name}")
    return pair


# === Devices ===


def check_distribution(fv):
    """The flags of `python -m tfqat.train` that spread a run over devices (not recipe flags)."""
    if fv.cpu_replicas < 1:
        raise app.UsageError(f"--cpu_replicas={fv.cpu_replicas} must be >= 1")
    if fv.cpu_replicas > 1 and fv.strategy != "mirrored":
        raise app.UsageError(
            f"--cpu_replicas={fv.cpu_replicas} splits the CPU for --strategy=mirrored only"
        )
    # On a machine without GPUs, known before TensorFlow starts (checked again once it has).
    check_batch_split(fv.batch_size, fv.cpu_replicas)
    if fv.collective_timeout not in NON_NEGATIVE:
        raise app.UsageError(
            f"--collective_timeout={fv.collective_timeout} must be {NON_NEGATIVE} (0: no limit)"
        )
    quantizes = "qat" in fv.stages or "pqat" in fv.stages
    if fv.strategy != "default" and quantizes and fv.qat_activation_quantizer != "moving_average":
        # TF-MOT assigns these ranges in replica context without averaging them: each replica
        # would keep the range of its own batches.
        raise app.UsageError(
            f"--qat_activation_quantizer={fv.qat_activation_quantizer} keeps one range per "
            f"replica under --strategy={fv.strategy}; use moving_average (averaged over replicas)"
        )
    if fv.strategy != "multi_worker":
        if fv["cluster_resolver"].present:
            raise app.UsageError("--cluster_resolver needs --strategy=multi_worker")
        return
    if fv.cluster_resolver == "slurm":
        if "SLURM_PROCID" not in os.environ:
            raise InputError("--cluster_resolver=slurm: not inside a Slurm job (no SLURM_PROCID)")
        return
    check_tf_config(os.environ.get("TF_CONFIG"))


def check_tf_config(text: str | None):
    """TF_CONFIG, as --strategy=multi_worker reads it: a cluster, and this task in it."""
    if not text:
        raise InputError(
            "--strategy=multi_worker reads the cluster from TF_CONFIG, which is not set (or give "
            "--cluster_resolver=slurm)"
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        tasks = cluster[task["type"]]
        address = tasks[task["index"]]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise InputError(
            'TF_CONFIG is not {"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
            f'"worker", "index": i}}: {type(e).__name__}: {e}'
        ) from e
    if not isinstance(address, str) or ":" not in address:
        raise InputError(f"TF_CONFIG: task {task['type']} {task['index']} has no host:port")


def check_batch_split(batch_size: int, replicas: int):
    """--batch_size is the global batch: it must split evenly over the replicas."""
    if batch_size % replicas:
        raise app.UsageError(
            f"--batch_size={batch_size} is the global batch and must be a multiple of the "
            f"{replicas} replicas"
        )


# The EMA model is what a stage evaluates and exports: half of its weight must come from the
# stage's last (1 - EMA_MEDIAN_AT_LEAST), or the exported model is one from mid-training.
EMA_MEDIAN_AT_LEAST = 0.75
# Offered in order when --ema_decay is too slow for a stage.
EMA_DECAYS = (0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.95, 0.9)


def ema_median_step(decay: float, tau: float, steps: int) -> int:
    """The step up to which the weights hold half of the EMA at the end of `steps`
    (train.loop.ModelEMA: decay ramped as `decay * (1 - exp(-step / tau))`; step 0 is the
    weights the stage started from)."""
    step = np.arange(1, steps + 1)
    kept = decay * (1.0 - np.exp(-step / tau))  # the share of the average each step keeps
    kept_after = np.append(np.cumprod(kept[::-1])[::-1][1:], 1.0)
    weight = (1.0 - kept) * kept_after  # of each step's weights in the final average
    up_to = np.cumsum(np.concatenate([[np.prod(kept)], weight]))  # from step 0 (the start) on
    return int(np.searchsorted(up_to, 0.5 * up_to[-1]))


def check_ema(stages):
    """Each stage's EMA (StageConfig: name, total_steps, ema_decay, ema_tau) must average the
    end of the stage, not its middle (docs/results/yolo_synthetic.md, "The EMA window")."""
    for stage in stages:
        steps, decay, tau = stage.total_steps, stage.ema_decay, stage.ema_tau
        median = ema_median_step(decay, tau, steps)
        if median >= EMA_MEDIAN_AT_LEAST * steps:
            continue
        fits = [d for d in EMA_DECAYS if d < decay and _ema_fits(d, tau, steps)]
        advice = f"use --ema_decay={fits[0]}" if fits else "lower --ema_decay or --ema_tau"
        raise app.UsageError(
            f"--ema_decay={decay:g} with --ema_tau={tau:g}: the {stage.name} stage's EMA model "
            "(what is evaluated and exported) would be mostly mid-training weights (half of it "
            f"from step {median} of {steps} or earlier); {advice}"
        )


def _ema_fits(decay: float, tau: float, steps: int) -> bool:
    return ema_median_step(decay, tau, steps) >= EMA_MEDIAN_AT_LEAST * steps


# === Paths ===


def check_paths(fv):
    """Annotation files are files, image folders hold images, the other paths exist."""
    if fv.train_annotations:
        for split in ("train", "val"):
            check_annotation_file(f"--{split}_annotations", getattr(fv, f"{split}_annotations"))
        for split in ("train", "val"):
            check_image_folder(f"--{split}_images", getattr(fv, f"{split}_images"))
    if fv.init_checkpoint:
        check_init_checkpoint(fv.init_checkpoint)
    if fv.model_dir and os.path.exists(fv.model_dir) and not os.path.isdir(fv.model_dir):
        raise InputError(f"--model_dir={fv.model_dir} is a file; give a folder for the run")


def check_annotation_file(flag: str, path: str):
    if not os.path.exists(path):
        raise InputError(f"{flag}={path}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{flag}={path} is not a file; give the split's COCO annotation JSON")


def check_image_folder(flag: str, path: str):
    if not os.path.exists(path):
        raise InputError(f"{flag}={path}: no such folder")
    if not os.path.isdir(path):
        raise InputError(f"{flag}={path} is not a folder; give the folder of the split's images")
    if first_image_file(path) is None:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise InputError(f"{flag}={path} holds no image ({kinds}), nor do its sub-folders")


def check_init_checkpoint(path: str):
    """A tfqat run directory with a float checkpoint, a Keras .h5 file or a TF checkpoint prefix."""
    flag = f"--init_checkpoint={path}"
    if os.path.isdir(path):
        if not has_checkpoint(path):
            raise InputError(f"{flag} is a folder but not a tfqat run with a float checkpoint")
    elif path.endswith(".h5"):
        if not os.path.isfile(path):
            raise InputError(f"{flag}: no such .h5 file")
    elif not os.path.isfile(f"{path}.index"):
        raise InputError(
            f"{flag}: neither a run directory, a .h5 file nor a TF checkpoint prefix "
            f"(no {path}.index)"
        )


# === Runs ===


def has_checkpoint(model_dir: str, stage: str = "float") -> bool:
    """Whether a run's stage has saved a checkpoint (its CheckpointManager's index file), read
    without TensorFlow."""
    return os.path.isfile(os.path.join(model_dir, "checkpoints", stage, "checkpoint"))


def run_flags(flag: str, path: str) -> flags.FlagValues:
    """The recipe of a run directory, read back from its flags.txt; cli.InputError naming the
    folder when it is not a run."""
    if not os.path.exists(path):
        raise InputError(f"{flag}={path}: no such folder")
    if not os.path.isdir(path):
        raise InputError(f"{flag}={path} is a file, not a run directory")
    flags_file = os.path.join(path, FLAGS_FILE)
    if not os.path.isfile(flags_file):
        raise InputError(f"{flag}={path} is not a tfqat run (no {FLAGS_FILE})")
    with _readable_recipe(flags_file):
        return read_flags(path)


def recipe_text_flags(text: str, source: str) -> flags.FlagValues:
    """The recipe an exported file carries (its run's flags.txt, in its metadata)."""
    with _readable_recipe(source):
        return flags_from_text(text)


@contextlib.contextmanager
def _readable_recipe(source: str):
    try:
        yield
    except flags.Error as e:
        raise InputError(f"{source}: not a recipe this tfqat can read: {e}") from e
