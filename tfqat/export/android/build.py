"""export/model_int8_android.tflite: the int8 detector as MediaPipe and the Task Library take it.

    uint8 image -> QUANTIZE (int8 = pixel - 128, exact) -> the int8 body of model_int8.tflite,
    byte for byte -> DEQUANTIZE per head -> float decode (DFL softmax expectation, centre-size
    encodings, sigmoid) -> TFLite_Detection_PostProcess -> boxes, classes, scores, count

plus standard TFLite metadata (`tflite_metadata`: labels, normalisation, output semantics) and
our own (`metadata`). Built from the exported model_int8.tflite and its embedded metadata alone
(labels, input size, decode parameters), so no Keras model is needed; TensorFlow only converts
the small decode tail (`tail`). Why the decode runs in float and the NMS runs as it
does: README, "Android: model_int8_android.tflite".
"""

import collections
import copy
import json
import os

import numpy as np

import tfqat
from tfqat.export import metadata as metadata_lib
from tfqat.export.android.tail import (
    DETECTION_OUTPUT_NAMES,
    POSTPROCESS_OP,
    InGraphNms,
    convert_tail,
)
from tfqat.export.android.tflite_metadata import (
    TFLITE_METADATA_NAME,
    add_tflite_metadata,
    detector_metadata,
    labels_from_zip,
)
from tfqat.export.errors import ExportValidationError
from tfqat.export.tflite.flatbuffer import inspect_model
from tfqat.export.tflite.stitch import set_outputs, stitch, with_uint8_input
from tfqat.fileio import atomic_write
from tfqat.runtime import metadata as runtime_metadata
from tfqat.runtime.tflite import TFLiteRunner

__all__ = ["ANDROID_FILE", "build_android_tflite", "export_android", "validate_android"]

ANDROID_FILE = "model_int8_android.tflite"
INT8_FILE = "model_int8.tflite"


def build_android_tflite(
    int8_model: bytes, nms: InGraphNms | None = None, representative_heads=None
) -> bytes:
    """The Android file of a detector's int8 .tflite (bytes with tfqat metadata embedded).

    `representative_heads`: see `android_tail.convert_tail` (int8 decode; for measuring only).
    """
    nms = nms or InGraphNms()
    body_metadata = _detection_metadata(int8_model)
    input_size = [int(v) for v in body_metadata["input"]["size"]]
    decode = body_metadata["decode"]
    labels = list(body_metadata["labels"]["names"])
    tail = convert_tail(
        input_size,
        len(labels),
        int(decode["reg_max"]),
        nms,
        tuple(decode["strides"]),
        representative_heads,
    )
    model = with_uint8_input(stitch(int8_model, tail))
    model = set_outputs(model, None, DETECTION_OUTPUT_NAMES)
    model = metadata_lib.embed_metadata(model, _android_metadata(body_metadata, model, nms))
    standard = detector_metadata(
        input_size,
        decode["score_threshold"],
        name="tfqat YOLO detector, int8",
        description="YOLO-style detector, int8 body (quantization-aware training), float decode "
        "and TFLite_Detection_PostProcess (per-class NMS) in the graph.",
        version=f"tfqat {tfqat.__version__}",
    )
    return add_tflite_metadata(model, standard, labels)


def _detection_metadata(int8_model: bytes) -> dict:
    entries = runtime_metadata.tflite_metadata_entries(int8_model)
    if runtime_metadata.METADATA_NAME not in entries:
        raise ValueError(
            f"the int8 file has no {runtime_metadata.METADATA_NAME!r} metadata "
            "(re-export the run with `python -m tfqat.export --model_dir=DIR`)"
        )
    metadata = json.loads(entries[runtime_metadata.METADATA_NAME].decode())
    if metadata["task"] != "detection":
        raise ValueError(
            f"an Android detector file needs a detection model, not {metadata['task']!r}"
        )
    return metadata


def _android_metadata(body_metadata: dict, model: bytes, nms: InGraphNms) -> dict:
    """The int8 file's tfqat metadata, with this file's input, outputs and in-graph decode."""
    info = inspect_model(model)
    (image,) = info["inputs"]
    metadata = copy.deepcopy(body_metadata)
    metadata["input"].update(
        name=image["name"],
        dtype=image["dtype"],
        scale=image["scale"],
        zero_point=image["zero_point"],
    )
    metadata["output_names"] = list(DETECTION_OUTPUT_NAMES)
    metadata["outputs"] = [dict(o, name=n) for n, o in zip(DETECTION_OUTPUT_NAMES, info["outputs"])]
    metadata["decode"] = dict(
        body_metadata["decode"],
        postprocess="in_graph",
        op=POSTPROCESS_OP,
        nms=nms.attributes(len(metadata["labels"]["names"])),
        boxes="ymin, xmin, ymax, xmax relative to the model input (letterboxed image)",
    )
    metadata["tflite"] = {
        "op_versions": info["op_versions"],
        "min_runtime_version": runtime_metadata.min_runtime_version(model),
    }
    return metadata


# === Validation ===


def _body_op_problems(int8_model: bytes, android_model: bytes) -> list[str]:
    """Every op of the int8 file must be in the Android file as often (its body is copied)."""
    body = collections.Counter(inspect_model(int8_model)["op_counts"])
    android = collections.Counter(inspect_model(android_model)["op_counts"])
    return [
        f"op {name}: {count} in {INT8_FILE}, {android[name]} in the Android file"
        for name, count in body.items()
        if android[name] < count
    ]


def _interface_problems(info: dict, input_size, nms: InGraphNms) -> list[str]:
    problems = []
    (image,) = info["inputs"]
    if image["dtype"] != "uint8" or image["shape"] != [1, *input_size, 3]:
        problems.append(
            f"input is {image['dtype']} {image['shape']}, expected uint8 "
            f"[1, {input_size[0]}, {input_size[1]}, 3]"
        )
    shapes = [o["shape"] for o in info["outputs"]]
    if [o["dtype"] for o in info["outputs"]] != ["float32"] * 4 or shapes != nms.output_shapes():
        problems.append(
            f"outputs are {[(o['dtype'], o['shape']) for o in info['outputs']]}, "
            f"expected float32 {nms.output_shapes()}"
        )
    if info["op_counts"].get(f"CUSTOM:{POSTPROCESS_OP}") != 1:
        problems.append(f"no single {POSTPROCESS_OP} op: {info['op_counts']}")
    return problems


def _detection_problems(runner, images, nms: InGraphNms) -> list[str]:
    boxes, classes, scores, counts = runner.raw(images)
    problems = []
    if counts.min() < 0 or counts.max() > nms.max_detections:
        problems.append(
            f"detection counts {counts.min()}..{counts.max()} outside 0..{nms.max_detections}"
        )
    if counts.max() == 0:
        problems.append(f"no detection on any of {len(images)} images")
    kept = np.arange(boxes.shape[1])[None] < counts.reshape(-1, 1)
    if kept.any() and not (scores[kept].min() >= nms.score_threshold and scores[kept].max() <= 1):
        problems.append("scores outside [score threshold, 1]")
    return problems


def validate_android(
    android_model: bytes, int8_model: bytes, images, nms: InGraphNms | None = None
) -> dict:
    """Checks the Android file; raises ExportValidationError naming each problem.

    Checks: uint8 [1, H, W, 3] input; four float32 outputs of the op's shapes; one
    TFLite_Detection_PostProcess; every op of the int8 file present; TFLITE_METADATA and the
    labels of the tfqat metadata in the appended labels.txt; LiteRT with its default delegate
    loads it and detects something on `images` (float32 pixels 0..255, letterboxed).
    """
    nms = nms or InGraphNms()
    metadata = _detection_metadata(android_model)
    info = inspect_model(android_model)
    input_size = [int(v) for v in metadata["input"]["size"]]
    problems = _interface_problems(info, input_size, nms)
    problems += _body_op_problems(int8_model, android_model)
    if TFLITE_METADATA_NAME not in runtime_metadata.tflite_metadata_entries(android_model):
        problems.append(f"no {TFLITE_METADATA_NAME} metadata entry")
    labels = list(metadata["labels"]["names"])
    if labels_from_zip(android_model) != labels:
        problems.append(f"labels.txt does not hold the model's labels {labels}")
    if not problems:
        try:
            problems += _detection_problems(TFLiteRunner(android_model), images, nms)
        except (RuntimeError, ValueError) as e:
            problems.append(f"LiteRT cannot load or run the file: {e}")
    if problems:
        raise ExportValidationError(
            "not a valid Android detector file:\n  " + "\n  ".join(problems)
        )
    return {"size_bytes": len(android_model), "op_counts": info["op_counts"]}


def export_android(export_dir: str, images, nms: InGraphNms | None = None) -> str:
    """Writes export_dir/model_int8_android.tflite from export_dir/model_int8.tflite; returns
    its path. `images`: a dozen letterboxed float32 images for the validation run."""
    with open(os.path.join(export_dir, INT8_FILE), "rb") as f:
        int8_model = f.read()
    data = build_android_tflite(int8_model, nms)
    validate_android(data, int8_model, images, nms)
    path = os.path.join(export_dir, ANDROID_FILE)
    atomic_write(path, data)
    return path
