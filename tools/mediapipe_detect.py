"""Runs MediaPipe's ObjectDetector over images; the worker of tools/check_mediapipe.py.

Runs inside the mediapipe venv that check_mediapipe.py builds (mediapipe and what it installs:
numpy, pillow, absl), so it imports nothing of tfqat.

    python tools/mediapipe_detect.py --model=FILE.tflite --images=LIST.json --output=OUT.json \
        [--score_threshold=0.001 --max_results=-1]

LIST.json: [{"image_id": ..., "path": ...}, ...]. OUT.json: {"mediapipe_version", "results":
[{"image_id", "width", "height", "detections": [{"index", "name", "score", "box": [left,
top, width, height]}]}], "median_ms"}: one detection per (box, category), boxes in image
pixels as ObjectDetector returns them (integers), median_ms the median wall time of one
`detect` call.
"""

import json
import os
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The .tflite file for ObjectDetector.")
flags.DEFINE_string("images", None, "JSON list of {image_id, path}.")
flags.DEFINE_string("output", None, "Where to write the detections (JSON).")
flags.DEFINE_float("score_threshold", 0.001, "ObjectDetectorOptions.score_threshold.")
flags.DEFINE_integer("max_results", -1, "ObjectDetectorOptions.max_results (-1: all).")
flags.mark_flags_as_required(["model", "images", "output"])


def _detector(model_path: str):
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=model_path),
        score_threshold=FLAGS.score_threshold,
        max_results=FLAGS.max_results,
    )
    return vision.ObjectDetector.create_from_options(options)


def _load_image(path: str):
    """The image as tfqat decodes it (PIL, RGB, EXIF ignored), as a mediapipe Image."""
    import mediapipe as mp
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), np.uint8))
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels), pixels.shape[:2]


def _detections(result) -> list[dict]:
    """One entry per (box, category): ObjectDetector folds the classes the model found for
    one box into one Detection with several categories (mediapipe 1.2.2 leaves `index` unset
    when the category has a name)."""
    found = []
    for detection in result.detections:
        box = detection.bounding_box
        for category in detection.categories:
            found.append(
                {
                    "index": category.index,
                    "name": category.category_name,
                    "score": float(category.score),
                    "box": [box.origin_x, box.origin_y, box.width, box.height],
                }
            )
    return found


def main(argv):
    del argv
    import mediapipe as mp

    with open(FLAGS.images) as f:
        images = json.load(f)
    results, seconds = [], []
    with _detector(FLAGS.model) as detector:
        for entry in images:
            image, (height, width) = _load_image(entry["path"])
            start = time.perf_counter()
            result = detector.detect(image)
            seconds.append(time.perf_counter() - start)
            results.append(
                {
                    "image_id": entry["image_id"],
                    "width": width,
                    "height": height,
                    "detections": _detections(result),
                }
            )
    payload = {
        "mediapipe_version": mp.__version__,
        "results": results,
        "median_ms": round(1e3 * float(np.median(seconds)), 3) if seconds else None,
    }
    tmp = f"{FLAGS.output}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
