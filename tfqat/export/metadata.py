"""Deployment metadata: what a device needs to run an exported file, kept with the file.

The metadata is one JSON object: the task, labels, input size and quantization, output names,
decode parameters, the recipe (flags.txt) and tfqat version, and the .tflite's op versions. It is
embedded in a .tflite as a Model.metadata entry named `METADATA_NAME` (the place TFLite keeps
its own "min_runtime_version"), and written to `export/metadata.json` for the .onnx / OpenVINO
files made from the same model.

Reading (`read_metadata`) needs the standard library only: no TensorFlow, no LiteRT schema, so
a device with nothing but tflite-runtime can read it. Embedding uses LiteRT's flatbuffer schema.
"""

import json
import os
import struct

import tfqat
from tfqat.fileio import atomic_write

__all__ = [
    "METADATA_FILE",
    "METADATA_NAME",
    "build_metadata",
    "embed_entry",
    "embed_metadata",
    "min_runtime_version",
    "read_metadata",
    "tflite_metadata_entries",
    "write_metadata",
]

METADATA_NAME = "tfqat_metadata"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1

# How the runtime decodes detections by default: a display threshold for a device (as
# Ultralytics' predict), and the thresholds COCO evaluation uses (tfqat.evaluation).
DETECTION_SCORE_THRESHOLD = 0.25
DETECTION_EVAL_SCORE_THRESHOLD = 0.001
DETECTION_IOU_THRESHOLD = 0.7
DETECTION_MAX_DETECTIONS = 300


# === Building ===


def build_metadata(task, flags_text: str, tflite_model) -> dict:
    """The metadata of one exported .tflite of `task` (a DetectionTask or PoseTask).

    Args:
      task: gives the labels (its training set's categories / keypoints) and decode settings.
      flags_text: the run's flags.txt contents (the recipe that made the model).
      tflite_model: the .tflite bytes or path; gives the input quantization, the outputs in the
        file's order and the op versions.
    """
    from tfqat.export.tflite_runtime import inspect_model, output_names

    info = inspect_model(tflite_model)
    (image_input,) = info["inputs"]
    names = output_names(tflite_model)
    outputs = [dict(summary, name=name) for name, summary in zip(names, info["outputs"])]
    return {
        "format": METADATA_NAME,
        "format_version": FORMAT_VERSION,
        "tfqat_version": tfqat.__version__,
        "task": task.name,
        "labels": _labels(task),
        "input": _input_description(task, image_input),
        "output_names": names,
        "outputs": outputs,
        "decode": _decode_parameters(task, outputs),
        "recipe": flags_text,
        "tflite": {
            "op_versions": info["op_versions"],
            "min_runtime_version": min_runtime_version(tflite_model),
        },
    }


def _labels(task) -> dict:
    dataset = task.train_set
    return {"names": list(dataset.category_names),
            "category_ids": [int(c) for c in dataset.category_ids]}


def _input_description(task, tensor) -> dict:
    height, width = (int(v) for v in task.config.input_size)
    return {
        "name": tensor["name"],
        "size": [height, width],
        "layout": "NHWC",
        "color": "RGB",
        "pixel_range": [0, 255],
        "dtype": tensor["dtype"],
        "scale": tensor["scale"],
        "zero_point": tensor["zero_point"],
        "exif_transpose": bool(task.train_set.exif_transpose),
        "preprocessing": "letterbox" if task.name == "detection" else "person_crop",
    }


def _decode_parameters(task, outputs) -> dict:
    if task.name == "detection":
        return _detection_decode(outputs)
    if task.name == "pose":
        return _pose_decode(task)
    raise ValueError(f"no metadata for task {task.name!r}; expected 'detection' or 'pose'")


def _detection_decode(outputs) -> dict:
    from tfqat.data.letterbox import PAD_VALUE
    from tfqat.models.yolo_spec import STRIDES

    box = next(o for o in outputs if o["name"] == "box_p3")
    return {
        "strides": list(STRIDES),
        "reg_max": int(box["shape"][-1]) // 4,
        "score_threshold": DETECTION_SCORE_THRESHOLD,
        "eval_score_threshold": DETECTION_EVAL_SCORE_THRESHOLD,
        "iou_threshold": DETECTION_IOU_THRESHOLD,
        "max_detections": DETECTION_MAX_DETECTIONS,
        "class_agnostic": False,
        "letterbox_pad_value": PAD_VALUE,
    }


def _pose_decode(task) -> dict:
    from tfqat.data.crop import BOX_PADDING, flip_permutation
    from tfqat.postprocess.pose import SCORE_THRESHOLD

    dataset = task.train_set
    height, width = (int(v) for v in task.config.input_size)
    return {
        "heatmap_stride": int(task.stride),
        "blur_sigma": float(task.config.blur_sigma),
        "keypoint_names": list(dataset.keypoint_names),
        "skeleton": [list(pair) for pair in dataset.skeleton],
        "flip_permutation": flip_permutation(dataset.keypoint_names),
        "box_padding": BOX_PADDING,
        "crop_aspect": width / height,
        "keypoint_score_threshold": SCORE_THRESHOLD,
    }


def write_metadata(export_dir: str, metadata: dict) -> str:
    """Writes `export_dir/metadata.json` atomically; returns its path."""
    path = os.path.join(export_dir, METADATA_FILE)
    atomic_write(path, json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    return path


# === Embedding in a .tflite ===


def embed_metadata(tflite_model, metadata: dict) -> bytes:
    """The .tflite with `metadata` as JSON in a Model.metadata entry named METADATA_NAME.

    An existing entry of that name is replaced; the converter's own entries are kept.
    """
    return embed_entry(tflite_model, METADATA_NAME, json.dumps(metadata, sort_keys=True).encode())


def embed_entry(tflite_model, name: str, payload: bytes) -> bytes:
    """The .tflite with `payload` in the Model.metadata entry `name` (replaced if present)."""
    import numpy as np

    from tfqat.export.tflite_runtime import _model_object, _pack, _read_bytes, schema

    model = _model_object(_read_bytes(tflite_model))
    payload = np.frombuffer(payload, np.uint8)
    entries = model.metadata or []
    existing = [e for e in entries if _entry_name(e.name) == name]
    if existing:
        model.buffers[existing[0].buffer].data = payload
    else:
        buffer = schema.BufferT()
        buffer.data = payload
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*entries, entry]
    return _pack(model)


def _entry_name(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


# === Reading, standard library only ===


def read_metadata(path: str) -> dict:
    """The metadata of an exported file.

    A .tflite carries it inside; without an embedded entry, and for .onnx / .xml files, it is
    `metadata.json` next to the file or in its parent folder (export/openvino/model.xml ->
    export/metadata.json). Raises FileNotFoundError naming the places looked at.
    """
    path = os.fspath(path)
    if path.endswith(".tflite"):
        with open(path, "rb") as f:
            entries = tflite_metadata_entries(f.read())
        if METADATA_NAME in entries:
            return json.loads(entries[METADATA_NAME].decode())
    folder = os.path.dirname(os.path.abspath(path))
    candidates = [os.path.join(folder, METADATA_FILE),
                  os.path.join(os.path.dirname(folder), METADATA_FILE)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    inside = f"no {METADATA_NAME!r} entry in the file, and " if path.endswith(".tflite") else ""
    raise FileNotFoundError(
        f"{path}: no tfqat metadata: {inside}no {' or '.join(candidates)} (re-export the run "
        "with `python -m tfqat.export --model_dir=DIR`)"
    )


def tflite_metadata_entries(tflite_model) -> dict[str, bytes]:
    """Name -> bytes of every Model.metadata entry of a .tflite, read with `struct` only."""
    if isinstance(tflite_model, (bytes, bytearray)):
        data = tflite_model
    else:
        with open(os.fspath(tflite_model), "rb") as f:
            data = f.read()
    reader = _FlatbufferReader(bytes(data))
    model = reader.root()
    buffers = reader.table_vector(model, _MODEL_BUFFERS)
    entries = {}
    for entry in reader.table_vector(model, _MODEL_METADATA):
        name = reader.string(entry, _METADATA_NAME_FIELD)
        index = reader.scalar(entry, _METADATA_BUFFER_FIELD, "<I")
        entries[name] = reader.buffer_bytes(buffers[index])
    return entries


def min_runtime_version(tflite_model) -> str:
    """The converter's estimate of the oldest TFLite runtime that runs the file ("" if none)."""
    entry = tflite_metadata_entries(tflite_model).get("min_runtime_version", b"")
    return entry.rstrip(b"\0").decode(errors="replace")


# Field numbers in TFLite's schema.fbs: table Model, table Metadata, table Buffer.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME_FIELD, _METADATA_BUFFER_FIELD = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _FlatbufferReader:
    """The few flatbuffer reads the metadata needs: tables, vectors of tables, strings, bytes."""

    def __init__(self, data: bytes):
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ValueError("not a .tflite file (no TFL3 flatbuffer identifier)")
        self.data = data

    def _u32(self, position: int) -> int:
        return struct.unpack_from("<I", self.data, position)[0]

    def root(self) -> int:
        return self._u32(0)

    def _field(self, table: int, field: int):
        """Absolute position of a table's field, or None when the field is absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * field
        if slot >= vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def _target(self, table: int, field: int):
        position = self._field(table, field)
        return None if position is None else position + self._u32(position)

    def scalar(self, table: int, field: int, fmt: str, default=0):
        position = self._field(table, field)
        return default if position is None else struct.unpack_from(fmt, self.data, position)[0]

    def _vector(self, table: int, field: int):
        vector = self._target(table, field)
        if vector is None:
            return 0, 0
        return vector + 4, self._u32(vector)

    def table_vector(self, table: int, field: int) -> list[int]:
        start, length = self._vector(table, field)
        return [start + 4 * i + self._u32(start + 4 * i) for i in range(length)]

    def string(self, table: int, field: int) -> str:
        start, length = self._vector(table, field)
        return self.data[start : start + length].decode()

    def buffer_bytes(self, buffer: int) -> bytes:
        """A Buffer's bytes: inline, or after the flatbuffer (files over 2 GB)."""
        start, length = self._vector(buffer, _BUFFER_DATA)
        if length:
            return self.data[start : start + length]
        offset = self.scalar(buffer, _BUFFER_OFFSET, "<Q")
        size = self.scalar(buffer, _BUFFER_SIZE, "<Q")
        return self.data[offset : offset + size] if offset > 1 else b""
