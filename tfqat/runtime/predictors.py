"""Runs an exported tfqat model on a device: numpy, pillow and the file's own runtime only.

    predictor = tfqat.runtime.load("runs/x/export/model_int8.tflite")
    detections = predictor.detect(image)                 # detection models
    people = predictor.keypoints(image, person_boxes)    # pose models (top-down)

The backend follows the file (`tfqat.runtime.backends.open_backend`): .tflite runs on
ai-edge-litert's Interpreter, or tflite-runtime's where LiteRT is not installed; .onnx on
onnxruntime and .xml on OpenVINO. What the model needs (task, input size, labels, output names,
decode parameters) comes from the file's metadata (`tfqat.runtime.metadata`), so a device needs
no other file. Images go through the same letterbox / person crop and the same numpy decoders as
training and evaluation. Nothing here imports TensorFlow.
"""

import os

import numpy as np

from tfqat.data import crop as crop_lib
from tfqat.data.letterbox import letterbox_image
from tfqat.postprocess import detection as detection_post
from tfqat.postprocess import pose as pose_post
from tfqat.runtime.backends import open_backend
from tfqat.runtime.metadata import read_metadata


def load(path: str, num_threads: int = 2):
    """A DetectionPredictor or PosePredictor for an exported .tflite, .onnx or OpenVINO .xml."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    metadata = read_metadata(path)
    predictors = {"detection": DetectionPredictor, "pose": PosePredictor}
    if metadata["task"] not in predictors:
        raise ValueError(
            f"{path}: metadata task {metadata['task']!r} is not one of {sorted(predictors)}"
        )
    backend = open_backend(
        path,
        num_threads=num_threads,
        output_order=list(metadata["output_names"]),
        output_quantization=_integer_output_quantization(metadata),
    )
    return predictors[metadata["task"]](backend, metadata)


def _integer_output_quantization(metadata: dict) -> dict:
    """{name: (scale, zero point)} of the int8 outputs of the .tflite the metadata describes.

    The .onnx / OpenVINO files are converted from that .tflite; where they keep its integer
    outputs, these dequantize them.
    """
    return {
        o["name"]: (o["scale"], o["zero_point"])
        for o in metadata.get("outputs", [])
        if o["dtype"] in ("int8", "uint8")
    }


# === Predictors ===


class _Predictor:
    def __init__(self, backend, metadata: dict):
        self.backend = backend
        self.metadata = metadata
        self.task = metadata["task"]
        self.input_size = tuple(int(v) for v in metadata["input"]["size"])
        self.decode_parameters = metadata["decode"]

    def run(self, image_uint8: np.ndarray) -> dict[str, np.ndarray]:
        """One model-input-sized image -> {output name: dequantized float32 [1, ...]}."""
        outputs = self.backend(np.asarray(image_uint8, np.uint8)[None])
        return dict(zip(self.backend.output_names, outputs))


class DetectionPredictor(_Predictor):
    """Letterbox -> model -> shared decode and NMS -> boxes in image pixels."""

    def detect(self, image, score_threshold=None, iou_threshold=None, max_detections=None):
        """Detections on an HxWx3 uint8 RGB image, by descending score.

        Thresholds default to the metadata's (`decode.score_threshold` etc.).

        Returns:
          A list of {"box": [x1, y1, x2, y2] image pixels, "score", "label" (model class index),
          "name", "category_id" (the training set's COCO id)}.
        """
        image = np.asarray(image, np.uint8)
        decode = self.decode_parameters

        def given_or_default(value, name):
            return decode[name] if value is None else value

        canvas, letterbox = letterbox_image(image, *self.input_size)
        ((boxes, scores, labels),) = detection_post.postprocess(
            self.run(canvas),
            self.input_size,
            [letterbox],
            [image.shape[:2]],
            iou_threshold=given_or_default(iou_threshold, "iou_threshold"),
            score_threshold=given_or_default(score_threshold, "score_threshold"),
            max_detections=given_or_default(max_detections, "max_detections"),
            class_agnostic=decode["class_agnostic"],
            reg_max=decode["reg_max"],
            strides=tuple(decode["strides"]),
        )
        labels_info = self.metadata["labels"]
        return [
            {
                "box": [float(v) for v in box],
                "score": float(score),
                "label": int(label),
                "name": labels_info["names"][int(label)],
                "category_id": int(labels_info["category_ids"][int(label)]),
            }
            for box, score, label in zip(boxes, scores, labels)
        ]


class PosePredictor(_Predictor):
    """Top-down: person box -> padded crop -> heatmaps -> shared sub-pixel decode -> image."""

    def keypoints(self, image, person_boxes=None):
        """Keypoints of each person box on an HxWx3 uint8 RGB image.

        Args:
          person_boxes: [N, 4] xyxy in image pixels (e.g. `detect`'s boxes); None: the whole
            image is one person box.

        Returns:
          A list of {"box", "keypoints": float32 [K, 3] (x, y in image pixels, confidence),
          "score"} per box; the score is the mean confidence of the keypoints above the
          metadata's `keypoint_score_threshold`, as in COCO evaluation.
        """
        image = np.asarray(image, np.uint8)
        if person_boxes is None:
            person_boxes = [[0, 0, image.shape[1], image.shape[0]]]
        boxes = np.asarray(person_boxes, np.float64).reshape(-1, 4)
        return [self._person(image, box) for box in boxes]

    def _person(self, image, box_xyxy) -> dict:
        decode = self.decode_parameters
        x1, y1, x2, y2 = box_xyxy
        box_xywh = (x1, y1, x2 - x1, y2 - y1)
        matrix = crop_lib.crop_matrix(box_xywh, self.input_size, decode["box_padding"])
        crop = crop_lib.warp_crop(image, matrix, self.input_size)
        (heatmaps,) = self.run(crop).values()
        keypoints = pose_post.decode(heatmaps, decode["heatmap_stride"], decode["blur_sigma"])[0]
        keypoints = pose_post.to_image(keypoints, matrix)
        record = pose_post.to_coco_results(
            0, keypoints, score_threshold=decode["keypoint_score_threshold"]
        )
        box = [float(v) for v in box_xyxy]
        return {"box": box, "keypoints": keypoints, "score": record["score"]}
