"""A run directory's recipe: flags.txt written by `tfqat.train`, read back by the other CLIs."""

import dataclasses
import os

from absl import flags

from tfqat.fileio import atomic_write
from tfqat.recipe import build
from tfqat.recipe.flags import PATH_FLAGS, define_flags, recipe_flag_names

FLAGS_FILE = "flags.txt"
# Recipe flags a rerun may change, as none changes the trained model: --name and --model_dir only
# locate the run directory (found already), --eval_every says when the EMA model is validated
# (validation draws no random numbers), --min_output_levels is a threshold of the export check,
# --memory_cache_mb says whether images are cached or streamed (the batches are the same).
RERUN_FREE_FLAGS = ("name", "model_dir", "eval_every", "min_output_levels", "memory_cache_mb")
# Flags that name a file or folder: the same one, spelled differently, is no difference.
FILE_FLAGS = (*PATH_FLAGS, "init_checkpoint")


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
    """flags.txt: every recipe flag that has a value, as a flagfile that reruns the job (file
    flags made absolute, so it reruns from any folder)."""
    lines = [
        f"--{name}={os.path.abspath(fv[name].value)}"
        if name in FILE_FLAGS
        else fv[name].serialize()
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


def check_rerun(fv, model_dir: str, overwrite: bool = False):
    """Stops (ValueError) a rerun of `model_dir` whose flags would change the trained model.

    Compares `fv` with the run's flags.txt, if it has one, before anything is read or written.
    With `overwrite` (--overwrite_flags) the differences are printed and accepted.
    """
    if not os.path.exists(os.path.join(model_dir, FLAGS_FILE)):
        return
    try:
        previous = read_flags(model_dir)
    except flags.Error as e:
        raise ValueError(f"{os.path.join(model_dir, FLAGS_FILE)}: cannot be read ({e})") from e
    differences = flag_differences(previous, fv)
    if not differences:
        return
    listed = "; ".join(differences)
    if overwrite:
        print(f"{model_dir}: continuing under changed flags (--overwrite_flags): {listed}")
        return
    raise ValueError(
        f"{model_dir} was trained with other flags ({FLAGS_FILE}): {listed}. Rerun with "
        f"--flagfile={os.path.join(model_dir, FLAGS_FILE)}, give another --model_dir, or add "
        "--overwrite_flags to continue under the new ones"
    )


def flag_differences(previous, current) -> list[str]:
    """Each recipe flag whose change would change the trained model, as "--flag: old -> new"."""
    differences = []
    for name in recipe_flag_names():
        if name in RERUN_FREE_FLAGS:
            continue
        old, new = previous[name].value, current[name].value
        if name in FILE_FLAGS and old is not None and new is not None:
            same = os.path.realpath(old) == os.path.realpath(new)
        else:
            same = old == new
        if not same:
            differences.append(f"--{name}: {_shown(old)} -> {_shown(new)}")
    return differences


def _shown(value) -> str:
    if value is None:
        return "(unset)"
    return ",".join(value) if isinstance(value, list) else str(value)


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


def load_run(model_dir) -> Run:
    """Rebuilds a run's task from its flags.txt, on the run's own datasets."""
    from tfqat.evaluate.report import load_report

    options = read_flags(model_dir)
    report = load_report(model_dir)
    paths = {k: report[k] for k in PATH_FLAGS} if report else build.dataset_paths(options)
    datasets = build.load_datasets(options, paths)
    return Run(
        model_dir=model_dir,
        task=build.make_task(options, *datasets),
        paths=paths,
        stages=list(options.stages),
        calibration_images=options.calibration_images,
        min_output_levels=options.min_output_levels,
    )
