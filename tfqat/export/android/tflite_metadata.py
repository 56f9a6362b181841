"""Standard TFLite metadata for a detector, as MediaPipe's and the Task Library's detectors read it.

The metadata is a flatbuffer of TFLite's metadata_schema.fbs (file identifier "M001") kept in
the model's Model.metadata entry "TFLITE_METADATA"; the label file travels in a zip archive
appended to the .tflite (stored, not compressed), as TFLite's metadata populator writes it.
The buffer is built here with the `flatbuffers` package alone: neither tflite-support nor
MediaPipe's writers are needed (MediaPipe's Python metadata writers do not import in the
mediapipe 1.2.2 wheel). Field numbers and enum values below are metadata_schema.fbs's.

What is written (the layout of TFLite's SSD detector metadata):
  input "image": ImageProperties RGB, NormalizationOptions mean 0 / std 1 (the model reads
    uint8 pixels as they are), stats min 0 / max 255;
  outputs "location" (BoundingBoxProperties BOUNDARIES, RATIO, index [1, 0, 3, 2]: the op's
    ymin, xmin, ymax, xmax), "category" (labels file, TENSOR_VALUE_LABELS), "score"
    (ScoreThresholdingOptions: the default display threshold) and "number of detections";
  output tensor group "detection_result".
"""

import io
import zipfile

import flatbuffers
import numpy as np

from tfqat.export.metadata import embed_entry

__all__ = [
    "LABELS_FILE",
    "OUTPUT_METADATA_NAMES",
    "TFLITE_METADATA_NAME",
    "add_tflite_metadata",
    "detector_metadata",
    "labels_from_zip",
]

TFLITE_METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
# MediaPipe's ObjectDetector finds the op's outputs by these names (any order).
OUTPUT_METADATA_NAMES = ("location", "category", "score", "number of detections")
_FILE_IDENTIFIER = b"M001"
# Output tensor groups need metadata parser 1.2.0.
_MIN_PARSER_VERSION = "1.2.0"

# Enums of metadata_schema.fbs.
_RGB = 1
_BOUNDARIES, _RATIO = 1, 0
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES, _BOUNDING_BOX_PROPERTIES = 1, 2, 3
_NORMALIZATION_OPTIONS, _SCORE_THRESHOLDING_OPTIONS = 1, 3
_TENSOR_VALUE_LABELS = 3


# === A small flatbuffer writer: a table is a list of (field number, kind, value) ===


def _table(*fields):
    return ("table", [f for f in fields if f[2] is not None])


def _build(builder, node):
    """Writes `node` (a table, string or vector) into `builder`; returns its offset."""
    kind, value = node
    if kind == "str":
        return builder.CreateString(value)
    if kind == "f32s":
        return builder.CreateNumpyVector(np.asarray(value, np.float32))
    if kind == "u32s":
        return builder.CreateNumpyVector(np.asarray(value, np.uint32))
    if kind in ("tables", "strs"):
        offsets = [_build(builder, ("str", v) if kind == "strs" else v) for v in value]
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()
    if kind != "table":
        raise ValueError(f"not a flatbuffer node: {kind!r}")
    children = {
        number: _build(builder, (k, v))
        for number, k, v in value
        if k in ("str", "f32s", "u32s", "tables", "strs", "table")
    }
    builder.StartObject(1 + max((number for number, _, _ in value), default=-1))
    for number, k, v in value:
        if number in children:
            builder.PrependUOffsetTRelativeSlot(number, children[number], 0)
        elif k == "u8":
            builder.PrependUint8Slot(number, v, 0)
        elif k == "i8":
            builder.PrependInt8Slot(number, v, 0)
        elif k == "i32":
            builder.PrependInt32Slot(number, v, 0)
        elif k == "f32":
            builder.PrependFloat32Slot(number, v, 0.0)
        else:
            raise ValueError(f"unknown field kind {k!r}")
    return builder.EndObject()


def _serialize(root) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(_build(builder, root), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


# === metadata_schema.fbs tables (field numbers from the schema) ===


def _content(properties_type, properties, dimension=None):
    """Content: the properties table, and the dimension (ValueRange) the content runs along."""
    value_range = (
        None if dimension is None else _table((0, "i32", dimension), (1, "i32", dimension))
    )
    return _table(
        (0, "u8", properties_type),
        (1, "table", properties[1]),
        (2, "table", value_range and value_range[1]),
    )


def _tensor(name, description, content, process_units=None, stats=None, files=None):
    return _table(
        (0, "str", name),
        (1, "str", description),
        (3, "table", content[1]),
        (4, "tables", process_units),
        (5, "table", stats and stats[1]),
        (6, "tables", files),
    )


def _process_unit(options_type, options):
    return _table((0, "u8", options_type), (1, "table", options[1]))


def _feature_content():
    return _content(_FEATURE_PROPERTIES, _table(), dimension=2)


def _image_input(height, width):
    normalization = _process_unit(
        _NORMALIZATION_OPTIONS, _table((0, "f32s", [0.0]), (1, "f32s", [1.0]))
    )
    stats = _table((0, "f32s", [255.0]), (1, "f32s", [0.0]))
    description = (
        f"RGB image, uint8 pixels 0..255, {height}x{width}: the picture resized with "
        "its aspect ratio kept and padded (letterbox) as in training, or stretched"
    )
    return _tensor(
        "image",
        description,
        _content(_IMAGE_PROPERTIES, _table((0, "i8", _RGB))),
        process_units=[normalization],
        stats=stats,
    )


def _outputs(score_threshold):
    boxes = _content(
        _BOUNDING_BOX_PROPERTIES,
        _table((0, "u32s", [1, 0, 3, 2]), (1, "i8", _BOUNDARIES), (2, "i8", _RATIO)),
        dimension=2,
    )
    labels = _table(
        (0, "str", LABELS_FILE),
        (1, "str", "Labels of the categories the model detects, one a line, in class index order."),
        (2, "i8", _TENSOR_VALUE_LABELS),
    )
    threshold = _process_unit(
        _SCORE_THRESHOLDING_OPTIONS, _table((0, "f32", float(score_threshold)))
    )
    location, category, score, count = OUTPUT_METADATA_NAMES
    return [
        _tensor(location, "Boxes (ymin, xmin, ymax, xmax) relative to the model input.", boxes),
        _tensor(
            category,
            "Class index of each box (labels.txt line).",
            _feature_content(),
            files=[labels],
        ),
        _tensor(
            score,
            "Score of each box (sigmoid of the class logit).",
            _feature_content(),
            process_units=[threshold],
        ),
        _tensor(count, "The number of detected boxes.", _feature_content()),
    ]


def detector_metadata(
    input_size, score_threshold: float, name: str, description: str, version: str
) -> bytes:
    """The metadata flatbuffer of a uint8-input detector with TFLite_Detection_PostProcess."""
    height, width = input_size
    group = _table((0, "str", "detection_result"), (1, "strs", list(OUTPUT_METADATA_NAMES[:3])))
    subgraph = _table(
        (2, "tables", [_image_input(height, width)]),
        (3, "tables", _outputs(score_threshold)),
        (8, "tables", [group]),
    )
    return _serialize(
        _table(
            (0, "str", name),
            (1, "str", description),
            (2, "str", version),
            (3, "tables", [subgraph]),
            (4, "str", "tfqat"),
            (7, "str", _MIN_PARSER_VERSION),
        )
    )


def add_tflite_metadata(tflite_model: bytes, metadata: bytes, labels) -> bytes:
    """The model with `metadata` as its TFLITE_METADATA entry and labels.txt zipped behind it.

    The zip goes last: any later rewrite of the flatbuffer would drop it.
    """
    data = embed_entry(tflite_model, TFLITE_METADATA_NAME, metadata)
    buffer = io.BytesIO(data)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))
    return buffer.getvalue()


def labels_from_zip(tflite_model: bytes) -> list[str]:
    """The labels of a file written by `add_tflite_metadata` (read back with zipfile)."""
    with zipfile.ZipFile(io.BytesIO(tflite_model)) as archive:
        return archive.read(LABELS_FILE).decode().splitlines()
