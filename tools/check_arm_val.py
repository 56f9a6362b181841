"""The val side of check_arm.py, through tfqat: the file's metadata, the val set, the model
inputs (letterboxed images or person crops, as tfqat evaluates) and the COCO metrics of raw
int8 outputs with tfqat's numpy post-processors."""

import dataclasses
import json
import os
import re
import struct

import numpy as np

from tfqat.data.coco import DatasetError, load_coco
from tfqat.data.images import default_cache_dir
from tfqat.data.letterbox import letterboxed_batches
from tfqat.postprocess import pose as pose_post
from tfqat.postprocess.detection import detection_results
from tfqat.postprocess.metrics import coco_metrics
from tfqat.runtime.metadata import read_metadata

__all__ = ["InputError", "ValInputs", "default_cache_dir", "load_val_set", "score", "val_inputs"]

INTEGER_TYPES = ("int8", "uint8")


class InputError(ValueError):
    """Bad input to the check; the message names the file or the flag."""


@dataclasses.dataclass
class ValInputs:
    quantized: np.ndarray  # the model inputs [M, H, W, 3], in the file's input type
    image_ids: list  # the N val images they come from
    matrices: np.ndarray = None  # pose: each crop's crop-to-image matrix [M, 3, 3]
    person_image_ids: list = None  # pose: the image id of each crop


# === The file and its val set ===


def load_val_set(model: str, val_annotations=None, val_images=None):
    """(metadata, CocoDataset, {"val_annotations", "val_images"}) for a fully-integer .tflite."""
    metadata = read_model_metadata(model)
    paths = val_set_paths(model, val_annotations, val_images)
    recipe = re.search(r"^--annotation_problems=(\w+)$", metadata.get("recipe", ""), re.MULTILINE)
    try:
        dataset = load_coco(
            paths["val_annotations"],
            paths["val_images"],
            metadata["task"],
            exif_transpose=bool(metadata["input"].get("exif_transpose")),
            annotation_problems=recipe.group(1) if recipe else "error",
        )
    except DatasetError as e:
        raise InputError(str(e).splitlines()[0]) from e
    if not dataset.samples:
        raise InputError(f"{paths['val_annotations']}: no val images")
    return metadata, dataset, paths


def read_model_metadata(model: str) -> dict:
    if not os.path.isfile(model):
        raise InputError(f"--model={model}: no such file")
    if not model.endswith(".tflite"):
        raise InputError(f"--model={model}: not a .tflite file")
    try:
        metadata = read_metadata(model)
    except ValueError as e:  # names what is wrong: not a .tflite, or bad metadata JSON
        raise InputError(f"--model={model}: {e}") from e
    except (struct.error, IndexError) as e:
        raise InputError(f"--model={model}: a truncated or corrupt .tflite file ({e})") from e
    except FileNotFoundError as e:
        raise InputError(str(e)) from e
    if metadata.get("task") not in ("detection", "pose"):
        raise InputError(
            f"--model={model}: metadata task {metadata.get('task')!r} is not detection or pose"
        )
    types = [metadata["input"]["dtype"], *(o["dtype"] for o in metadata["outputs"])]
    if any(t not in INTEGER_TYPES for t in types):
        raise InputError(
            f"--model={model}: not a fully-integer file (input and output types "
            f"{types}); check_arm compares integer outputs: give model_int8.tflite"
        )
    return metadata


def val_set_paths(model: str, val_annotations, val_images) -> dict:
    """The flags' val set, else the one in the report.json of the run the file belongs to."""
    if val_annotations:
        paths = {"val_annotations": val_annotations, "val_images": val_images}
        source = "--{}"
    else:
        export = os.path.dirname(os.path.abspath(model))
        report = os.path.join(os.path.dirname(export), "report.json")
        if os.path.basename(export) != "export" or not os.path.isfile(report):
            raise InputError(
                f"--model={model}: no report.json beside its export/ folder to take "
                "the val set from; give --val_annotations and --val_images"
            )
        with open(report) as f:
            content = json.load(f)
        paths = {k: content.get(k) for k in ("val_annotations", "val_images")}
        source = f"{report}: {{}}"
    for key, path in paths.items():
        if not path or not os.path.exists(path):
            raise InputError(f"{source.format(key)}={path}: no such file or folder")
    return {k: os.path.abspath(v) for k, v in paths.items()}


# === Model inputs ===


def quantize(images: np.ndarray, input_info: dict) -> np.ndarray:
    """float32 pixels -> the file's input type, as TFLiteRunner quantizes them."""
    dtype = np.dtype(input_info["dtype"])
    limits = np.iinfo(dtype)
    values = np.round(images / input_info["scale"]) + input_info["zero_point"]
    return np.clip(values, limits.min, limits.max).astype(dtype)


def val_inputs(metadata: dict, dataset, num_images: int) -> ValInputs:
    """The first `num_images` val images as model inputs: letterboxed (detection) or the crops
    of their ground-truth person boxes (pose), with the same code as tfqat's evaluation."""
    size = tuple(int(v) for v in metadata["input"]["size"])
    image_ids = [s.image_id for s in dataset.samples[:num_images]]
    if metadata["task"] == "detection":
        batches = letterboxed_batches(dataset, size, 16, limit=num_images)
        images = np.concatenate([images for _, images, _ in batches])
        return ValInputs(quantize(images, metadata["input"]), image_ids)
    # Imported here, not above: only pose crops need TensorFlow (tf.data), whose import takes
    # seconds and logs C++ lines that would bury a bad-input message.
    from tfqat.data.pipeline import person_instances, pose_dataset

    count = int((person_instances(dataset, training=False)["sample"] < len(image_ids)).sum())
    if not count:
        raise InputError(
            f"{dataset.annotation_file}: no person box in the first {len(image_ids)} val images"
        )
    image_of = {int(a): s.image_id for s in dataset.samples for a in s.ann_ids}
    crops, matrices, people = [], [], []
    for batch in pose_dataset(dataset, size, 64, training=False):
        crops.append(batch["images"].numpy())
        matrices.append(batch["matrix"].numpy())
        people += [image_of[int(a)] for a in batch["ann_id"].numpy()]
        if len(people) >= count:
            break
    images = np.concatenate(crops)[:count]
    return ValInputs(
        quantize(images, metadata["input"]),
        image_ids,
        np.concatenate(matrices)[:count],
        people[:count],
    )


# === Metrics ===


def dequantize(values: np.ndarray, output_info: dict) -> np.ndarray:
    scale, zero_point = output_info["scale"], output_info["zero_point"]
    return ((values.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)


def score(raw_outputs, metadata: dict, dataset, inputs: ValInputs) -> dict:
    """mAP50_95/mAP50 (detection) or AP/AP50 (pose) of raw outputs on the N val images."""
    outputs = {
        info["name"]: dequantize(raw, info) for raw, info in zip(raw_outputs, metadata["outputs"])
    }
    decode = metadata["decode"]
    if metadata["task"] == "detection":
        results = detection_results(
            replay(outputs, inputs.quantized, metadata["input"]),
            dataset,
            tuple(metadata["input"]["size"]),
            batch_size=16,
            score_threshold=decode["eval_score_threshold"],
            iou_threshold=decode["iou_threshold"],
            max_detections=decode["max_detections"],
            limit=len(inputs.image_ids),
        )
        return coco_metrics(dataset.annotation_file, results, "bbox", inputs.image_ids)
    (heatmaps,) = outputs.values()
    keypoints = pose_post.decode(heatmaps, decode["heatmap_stride"], decode["blur_sigma"])
    keypoints = pose_post.to_image(keypoints, inputs.matrices)
    results = [
        pose_post.to_coco_results(image_id, person, dataset.category_ids[0])
        for image_id, person in zip(inputs.person_image_ids, keypoints)
    ]
    return coco_metrics(dataset.annotation_file, results, "keypoints", inputs.image_ids)


def replay(outputs: dict, quantized: np.ndarray, input_info: dict):
    """A predict_fn for tfqat's detection evaluation that hands back outputs computed elsewhere,
    batch after batch, after checking that the batch is the input they were computed on."""
    cursor = [0]

    def predict(images):
        batch = slice(cursor[0], cursor[0] + len(images))
        cursor[0] += len(images)
        if not np.array_equal(quantize(images, input_info), quantized[batch]):
            raise RuntimeError("the val images changed between running the model and scoring")
        return {name: array[batch] for name, array in outputs.items()}

    return predict
