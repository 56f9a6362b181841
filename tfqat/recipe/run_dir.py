"""A run directory's recipe: flags.txt written by `tfqat.train`, read back by the other CLIs."""

import dataclasses
import os

from absl import flags

from tfqat.fileio import atomic_write
from tfqat.recipe import build
from tfqat.recipe.flags import PATH_FLAGS, define_flags, recipe_flag_names

FLAGS_FILE = "flags.txt"


@dataclasses.dataclass
class Run:
    """What a finished (or running) run is made of, rebuilt from its flags.txt."""

    model_dir: str
    task: object
    paths: dict  # the four dataset paths (PATH_FLAGS), absolute
    stages: list  # --stages
    calibration_images: int
    min_output_levels: int


def write_flags(fv, model_dir: str):
    """flags.txt: every recipe flag that has a value, as a flagfile that reruns the job."""
    lines = [
        fv[name].serialize()
        for name in recipe_flag_names()
        if name != "model_dir" and fv[name].value is not None
    ]
    lines.append(f"--model_dir={model_dir}")
    atomic_write(os.path.join(model_dir, FLAGS_FILE), "\n".join(lines) + "\n")


def read_flags(model_dir: str) -> flags.FlagValues:
    """The recipe flags of a run, from its flags.txt, on a private FlagValues."""
    options = flags.FlagValues()
    define_flags(options)
    options(["tfqat", f"--flagfile={os.path.join(model_dir, FLAGS_FILE)}"])
    return options


def find_run_dir(path: str) -> str:
    """The run directory a model path belongs to: the folder above it that holds flags.txt."""
    current = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    while True:
        if os.path.exists(os.path.join(current, FLAGS_FILE)):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            raise FileNotFoundError(f"{path} is not inside a tfqat run directory (no flags.txt)")
        current = parent


def load_run(model_dir, val_annotations=None, val_images=None) -> Run:
    """Rebuilds a run's task from its flags.txt, optionally on another val set."""
    from tfqat.evaluate.report import load_report

    options = read_flags(model_dir)
    report = load_report(model_dir)
    paths = {k: report[k] for k in PATH_FLAGS} if report else build.dataset_paths(options)
    if val_annotations:
        paths.update(
            val_annotations=os.path.abspath(val_annotations), val_images=os.path.abspath(val_images)
        )
    datasets = build.load_datasets(options, paths)
    return Run(
        model_dir=model_dir,
        task=build.make_task(options, *datasets),
        paths=paths,
        stages=list(options.stages),
        calibration_images=options.calibration_images,
        min_output_levels=options.min_output_levels,
    )
