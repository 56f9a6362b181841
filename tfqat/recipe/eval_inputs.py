"""What `python -m tfqat.evaluate` evaluates, on which val set, and where the results go.

`--model` is a run directory (its float Keras weights) or an exported file, inside its run or
copied out of it (its metadata carries the recipe). Everything here is checked before
TensorFlow loads and before any image is decoded: cli.InputError (exit status 1) names a file
that is not what it should be, app.UsageError (exit status 2) a flag combination that cannot
work. Only the val set is read; the train set is not needed to evaluate.

A run's own files are written only when the run's model is evaluated on the run's own val set
and no other --output is given; any other evaluation writes its report at --output and its
predictions beside it (`<output stem>_predictions/<artifact>.json`).
"""

import dataclasses
import json
import os

from absl import app, flags

from tfqat.cli import InputError, quiet_stderr
from tfqat.data.coco import CocoDataset, load_coco
from tfqat.evaluate.artifacts import exported_kind
from tfqat.recipe import build, checks
from tfqat.recipe.flags import PATH_FLAGS
from tfqat.recipe.run_dir import FLAGS_FILE, find_run_dir
from tfqat.runtime.backends import file_format, open_backend
from tfqat.runtime.metadata import METADATA_FILE, read_metadata

REPORT_FILE = "report.json"


@dataclasses.dataclass
class EvalModel:
    """The model `--model` names, and the recipe that made it."""

    path: str  # absolute: a run directory or an exported file
    model_dir: str | None  # the run it belongs to; None for a file copied out of its run
    options: flags.FlagValues  # the recipe's flags
    metadata: dict | None  # an exported file's metadata (for a run: its export's, if any)
    kind: tuple | None = None  # an exported file's (artifact name, format, precision)

    @property
    def is_run(self) -> bool:
        return os.path.isdir(self.path)

    def run_report(self) -> dict | None:
        return _read_report(os.path.join(self.model_dir, REPORT_FILE)) if self.model_dir else None


@dataclasses.dataclass
class Destination:
    """Where an evaluation's report and predictions go."""

    report_path: str
    predictions_dir: str
    into_run: bool  # the run's own report.json and predictions/


# === The model ===


def eval_model(path: str) -> EvalModel:
    """The checked `--model`: a run with a float checkpoint, or a model file that loads."""
    if not os.path.exists(path):
        raise InputError(f"--model={path}: no such file or directory")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return _run_model(path)
    try:
        file_format(path)
    except ValueError as e:
        raise InputError(f"--model={path} is not a model file: {e}") from e
    metadata = read_metadata(path)
    with quiet_stderr():
        open_backend(path)  # fails here, in one line, if the runtime cannot load the file
    kind = exported_kind(path, metadata)
    model_dir = _run_of(path)
    if model_dir:
        options = checks.run_flags("--model", model_dir)
    else:
        options = checks.recipe_text_flags(metadata.get("recipe", ""), path)
    return EvalModel(path, model_dir, options, metadata, kind)


def _run_model(path: str) -> EvalModel:
    if not os.path.isfile(os.path.join(path, FLAGS_FILE)):
        raise InputError(
            f"--model={path} is a folder but not a tfqat run (no {FLAGS_FILE}); give a run "
            "directory or an exported .tflite, .onnx or .xml file"
        )
    options = checks.run_flags("--model", path)
    if not checks.has_checkpoint(path):
        raise InputError(f"--model={path}: the run has no float checkpoint yet")
    metadata_file = os.path.join(path, "export", METADATA_FILE)
    metadata = read_metadata(metadata_file) if os.path.isfile(metadata_file) else None
    return EvalModel(path, path, options, metadata)


def _run_of(path: str) -> str | None:
    """The run directory an exported file is in, None for a copy outside any run."""
    try:
        return find_run_dir(path)
    except FileNotFoundError:
        return None


# === The val set ===


def is_own_val_set(model: EvalModel, annotations: str | None, images: str | None) -> bool:
    """No --val_* flags, or the ones of the run's report.json."""
    if not annotations:
        return True
    report = model.run_report()
    return bool(report) and [os.path.abspath(annotations), os.path.abspath(images)] == [
        report.get("val_annotations"),
        report.get("val_images"),
    ]


def val_paths(model: EvalModel, annotations: str | None, images: str | None) -> dict:
    """{"val_annotations", "val_images"}, absolute: the flags', else the run's or the recipe's."""
    if annotations:
        checks.check_annotation_file("--val_annotations", annotations)
        checks.check_image_folder("--val_images", images)
        return {
            "val_annotations": os.path.abspath(annotations),
            "val_images": os.path.abspath(images),
        }
    paths = recipe_paths(model)
    for name in ("val_annotations", "val_images"):
        if not os.path.exists(paths[name] or ""):
            raise InputError(
                f"the val set the model was trained with is not here ({paths[name]}); give "
                "--val_annotations and --val_images"
            )
    return {name: paths[name] for name in ("val_annotations", "val_images")}


def recipe_paths(model: EvalModel) -> dict:
    """The dataset paths of the model's recipe: its run's report.json, else its flags (the
    synthetic set is made once if missing)."""
    report = model.run_report()
    if report and all(report.get(name) for name in PATH_FLAGS):
        return {name: report[name] for name in PATH_FLAGS}
    if model.options.train_annotations or model.options.dataset:
        return build.dataset_paths(model.options)
    return dict.fromkeys(PATH_FLAGS)


def load_val_set(model: EvalModel, paths: dict) -> tuple[CocoDataset, CocoDataset]:
    """(the val set, the model's labels): the val annotations are checked against the model's
    categories before any of its images is decoded (cli.InputError when they differ)."""

    def read(check_images: bool) -> CocoDataset:
        return load_coco(
            paths["val_annotations"],
            paths["val_images"],
            model.options.task,
            exif_transpose=model.options.exif_transpose,
            annotation_problems=model.options.annotation_problems,
            check_images=check_images,
        )

    annotations = read(check_images=False)
    labels = model_labels(model, annotations)
    for what in ("category_ids", "keypoint_names"):
        theirs, model_ones = list(getattr(annotations, what)), list(getattr(labels, what))
        if theirs != model_ones:
            raise InputError(
                f"{annotations.annotation_file}: its {what.replace('_', ' ')} {theirs} are not "
                f"the model's {model_ones}"
            )
    return read(check_images=True), labels


def model_labels(model: EvalModel, val_set: CocoDataset) -> CocoDataset:
    """A dataset with no samples and the categories the model was trained on: from its
    metadata, else from its run's own val annotations (read without their images)."""
    if model.metadata:
        return _labels_from_metadata(model.metadata, val_set.exif_transpose)
    own = recipe_paths(model)
    if own["val_annotations"] == val_set.annotation_file:
        return dataclasses.replace(val_set, samples=[])
    if not own["val_annotations"] or not os.path.isfile(own["val_annotations"]):
        raise InputError(
            f"--model={model.path}: cannot tell the model's categories: its run's val "
            f"annotations ({own['val_annotations']}) are not here"
        )
    run_val = load_coco(
        own["val_annotations"], own["val_images"], model.options.task, check_images=False
    )
    return dataclasses.replace(run_val, samples=[])


def _labels_from_metadata(metadata: dict, exif_transpose: bool) -> CocoDataset:
    decode = metadata.get("decode", {})
    return CocoDataset(
        task=metadata["task"],
        annotation_file="",
        image_dir="",
        samples=[],
        category_ids=list(metadata["labels"]["category_ids"]),
        category_names=list(metadata["labels"]["names"]),
        keypoint_names=list(decode.get("keypoint_names", [])),
        skeleton=[list(pair) for pair in decode.get("skeleton", [])],
        warnings=[],
        stats={},
        exif_transpose=exif_transpose,
    )


# === Where the results go ===


def destination(model: EvalModel, own_val_set: bool, output: str | None) -> Destination:
    """The run's report.json and predictions/ for a run's model on its own val set (and no
    other --output); else --output, required, with `<stem>_predictions/` beside it."""
    run_report = os.path.join(model.model_dir, REPORT_FILE) if model.model_dir else None
    output = os.path.abspath(output) if output else None
    if run_report and own_val_set and output in (None, run_report):
        return Destination(run_report, os.path.join(model.model_dir, "predictions"), True)
    if output is None:
        why = "on another val set" if model.model_dir else "outside a run"
        raise app.UsageError(
            f"give --output=REPORT.json: a model evaluated {why} writes its report there and "
            "its predictions beside it, never into a run"
        )
    if output == run_report:
        raise app.UsageError(
            f"--output={output} is the run's report of its own val set; give another file"
        )
    if model.model_dir and output.startswith(os.path.join(model.model_dir, "")):
        raise app.UsageError(
            f"--output={output} is inside the run {model.model_dir}; give a file outside it"
        )
    if not output.endswith(".json"):
        raise app.UsageError(f"--output={output} must be a .json file (its .md goes beside it)")
    if not os.path.isdir(os.path.dirname(output)):
        raise InputError(f"--output={output}: no folder {os.path.dirname(output)} to write in")
    return Destination(output, os.path.splitext(output)[0] + "_predictions", False)


def existing_report(place: Destination, paths: dict) -> dict | None:
    """The report already at the destination, if any; it must be of the same val set."""
    report = _read_report(place.report_path)
    if report is None or place.into_run:
        return report
    if report.get("val_annotations") != paths["val_annotations"]:
        raise InputError(
            f"--output={place.report_path} holds results on another val set "
            f"({report.get('val_annotations')}); give another file"
        )
    return report


def _read_report(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            report = json.load(f)
    except ValueError as e:
        raise InputError(f"{path}: not a tfqat report.json ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list):
        raise InputError(f"{path}: not a tfqat report.json (no artifacts list)")
    return report
