"""Deployment metadata: what a device needs to run an exported file, kept with the file.

The metadata is one JSON object: the task, labels, input size and quantization, output names,
decode parameters, the recipe (flags.txt) and tfqat version, and the .tflite's op versions. It is
embedded in a .tflite as a Model.metadata entry named `METADATA_NAME` (the place TFLite keeps
its own "min_runtime_version"), and written to `export/metadata.json` for the .onnx / OpenVINO
files made from the same model. `tfqat.runtime.metadata` reads it back (standard library only);
embedding uses LiteRT's flatbuffer schema.
"""

import json
import os

import tfqat
from tfqat.fileio import atomic_write
from tfqat.runtime.metadata import METADATA_FILE, METADATA_NAME, min_runtime_version

__all__ = ["build_metadata", "embed_entry", "embed_metadata", "write_metadata"]

FORMAT_VERSION = 1

# How the runtime decodes detections by default: a display threshold for a device (as
# Ultralytics' predict), and the thresholds COCO evaluation uses (tfqat.tasks.detection).
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
    from tfqat.export.tflite.flatbuffer import inspect_model, output_names

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
    return {
        "names": list(dataset.category_names),
        "category_ids": [int(c) for c in dataset.category_ids],
    }


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

    from tfqat.export.tflite.flatbuffer import model_object, pack, read_bytes, schema

    model = model_object(read_bytes(tflite_model))
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
    return pack(model)


def _entry_name(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
