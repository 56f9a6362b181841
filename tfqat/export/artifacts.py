"""Every file a run exports (README.md, "Run directory"): converted, validated, then written.

The whole set is written into `export.partial-<pid>/` beside `export/` and replaces it only
once every file has passed its checks: a failed check or an interrupted export leaves the
previous set as it was.

`tfqat.evaluate.artifacts.export_and_evaluate` calls `export_files` at the end of a recipe and
from `python -m tfqat.export`, so a run's files are the same whichever wrote them.
"""

import contextlib
import glob
import os
import shutil

from tfqat.fileio import atomic_write, fsync_directory

# Exported file (path relative to export/) -> (artifact name, format, precision).
EXPORTED = {
    "model_float32.tflite": ("tflite_float32", "tflite", "float32"),
    "model_int8.tflite": ("tflite_int8", "tflite", "int8"),
    "model_int8_ptq.tflite": ("tflite_int8_ptq", "tflite", "int8"),
    "model_int8.onnx": ("onnx_int8", "onnx", "int8"),
    "openvino/model_int8.xml": ("openvino_int8", "openvino", "int8"),
    "openvino/model_float.xml": ("openvino_float", "openvino", "float32"),
    "model_int8_android.tflite": ("tflite_int8_android", "tflite", "int8"),
}
ANDROID_ARTIFACT = "tflite_int8_android"
# Android's detector APIs take detectors only: the pose net has no Android file.
_DETECTION_ONLY = ("model_int8_android.tflite",)
# Images that check the Android file's detections against the int8 file's.
_ANDROID_CHECK_IMAGES = 12


def exported_files(task_name: str) -> list[str]:
    """The files of EXPORTED a run of `task_name` writes (paths relative to export/)."""
    return [f for f in EXPORTED if task_name == "detection" or f not in _DETECTION_ONLY]


def artifact_kind(path) -> tuple[str, str, str]:
    """(artifact name, format, precision) of an exported file, from its place in export/."""
    parts = os.path.abspath(path).split(os.sep)
    key = "/".join(parts[-2:]) if parts[-2] == "openvino" else parts[-1]
    if key not in EXPORTED:
        raise ValueError(f"{path}: unknown artifact; expected export/ + one of {sorted(EXPORTED)}")
    return EXPORTED[key]


def export_files(task, models, model_dir, calibration, min_output_levels=32):
    """Writes and validates every file of EXPORTED plus export/metadata.json; returns export/.

    The metadata records the run's flags.txt (the recipe that made the model).
    """
    from tfqat.export import metadata as metadata_lib
    from tfqat.export.openvino.convert import export_intel
    from tfqat.export.tflite import convert
    from tfqat.export.tflite.validate import validate_int8

    representative = [image[None] for image in calibration]
    files = {
        "model_float32.tflite": convert.convert_float32(models["keras_float"]),
        "model_int8_ptq.tflite": convert.convert_int8(models["keras_float"], representative),
        "model_int8.tflite": convert.convert_int8(models["keras_qat"], representative),
    }
    for name, data in files.items():
        if EXPORTED[name][2] == "int8":
            validate_int8(
                data,
                calibration,
                score_output_names=task.score_output_names,
                min_levels=min_output_levels,
            )
    flags_file = os.path.join(model_dir, "flags.txt")
    flags_text = open(flags_file).read() if os.path.exists(flags_file) else ""
    export_dir = os.path.join(model_dir, "export")
    with staged_folder(export_dir) as staging:
        for name, data in files.items():
            metadata = metadata_lib.build_metadata(task, flags_text, data)
            atomic_write(os.path.join(staging, name), metadata_lib.embed_metadata(data, metadata))
            if name == "model_int8.tflite":  # also describes the .onnx and IRs made from it
                metadata_lib.write_metadata(staging, metadata)
        export_intel(staging, calibration)
        if task.name == "detection":
            from tfqat.export.android.build import export_android

            export_android(staging, calibration[:_ANDROID_CHECK_IMAGES])
    return export_dir


@contextlib.contextmanager
def staged_folder(final_dir: str):
    """Yields an empty sibling folder to write a set of files into; when the block ends
    without an exception, it replaces `final_dir` whole, else it is removed and `final_dir`
    stays as it was. A crash between the two renames leaves `<final_dir>.previous`, which the
    next call puts back first."""
    parent, name = os.path.split(os.path.abspath(final_dir))
    previous = os.path.join(parent, f"{name}.previous")
    if os.path.isdir(previous) and not os.path.exists(final_dir):
        os.replace(previous, final_dir)
    for stale in glob.glob(os.path.join(parent, f"{name}.partial-*")):  # from a killed export
        shutil.rmtree(stale, ignore_errors=True)
    staging = os.path.join(parent, f"{name}.partial-{os.getpid()}")
    os.makedirs(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(final_dir):
        os.replace(final_dir, previous)
    os.replace(staging, final_dir)
    fsync_directory(parent)
    shutil.rmtree(previous, ignore_errors=True)
