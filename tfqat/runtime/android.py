"""Runs model_int8_android.tflite (decode and NMS inside the graph) with LiteRT: no TensorFlow.

The file ends in TFLite_Detection_PostProcess: boxes (ymin, xmin, ymax, xmax relative to the
model input), class indices, scores and a count per image.
"""

import numpy as np

from tfqat.runtime.metadata import read_metadata
from tfqat.runtime.tflite import TFLiteRunner


def relative_to_xyxy(boxes, input_size) -> np.ndarray:
    """The op's (ymin, xmin, ymax, xmax) relative to the input -> xyxy input pixels."""
    height, width = input_size
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)


class AndroidDetector:
    """The Android file on LiteRT: `detect(images)` -> per image (xyxy input pixels, scores,
    class indices), from float32 or uint8 letterboxed pixels [B, H, W, 3]."""

    def __init__(self, model, num_threads: int = 2):
        self.metadata = read_metadata(model) if isinstance(model, str) else None
        self.runner = TFLiteRunner(model, num_threads=num_threads)
        self.input_size = tuple(int(v) for v in self.runner.input_detail["shape"][1:3])

    def detect(self, images):
        boxes, classes, scores, counts = self.runner.raw(images)
        results = []
        for b, c, s, n in zip(boxes, classes, scores, counts.reshape(-1).astype(int)):
            results.append(
                (
                    relative_to_xyxy(b[:n], self.input_size),
                    s[:n].astype(np.float32),
                    c[:n].astype(np.int64),
                )
            )
        return results
