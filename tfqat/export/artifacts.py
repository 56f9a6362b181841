"""Every file a run exports (README.md, "Run directory"): converted, validated, then written.

`tfqat.evaluate.artifacts.export_and_evaluate` calls `export_files` at the end of a recipe and
from `python -m tfqat.export`, so a run's files are the same whichever wrote them.
"""

import os

from tfqat.fileio import atomic_write

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
    export_dir = os.path.join(model_dir, "export")
    os.makedirs(export_dir, exist_ok=True)
    flags_file = os.path.join(model_dir, "flags.txt")
    flags_text = open(flags_file).read() if os.path.exists(flags_file) else ""
    for name, data in files.items():
        metadata = metadata_lib.build_metadata(task, flags_text, data)
        atomic_write(os.path.join(export_dir, name), metadata_lib.embed_metadata(data, metadata))
        if name == "model_int8.tflite":  # also describes the .onnx and IRs made from this file
            metadata_lib.write_metadata(export_dir, metadata)
    export_intel(export_dir, calibration)
    if task.name == "detection":
        from tfqat.export.android.build import export_android

        export_android(export_dir, calibration[:_ANDROID_CHECK_IMAGES])
    return export_dir
