"""Runs an exported model on one image and draws what it finds into a PNG.

    python tools/predict.py --model=PATH --image=IMG --output=OUT.png [--score_threshold=S]
                            [--boxes="x1,y1,x2,y2;..."]

--model is a .tflite, an .onnx or an OpenVINO .xml written by tfqat's export; its metadata (in
the .tflite, or export/metadata.json) says what it is. A detector's boxes are drawn with class
name and score; a pose model's skeletons are drawn for each --boxes person box (xyxy, image
pixels), or for the whole image as one person. Each result is also printed as one JSON line.

Needs numpy, pillow, absl-py and the model's runtime only (no TensorFlow): see the README's
device install.
"""

import io
import json
import os
import sys

import numpy as np
from absl import app, flags

from tfqat import cli, runtime
from tfqat.data.draw import draw_boxes, draw_keypoints
from tfqat.data.images import decode_image
from tfqat.fileio import atomic_write
from tfqat.runtime.metadata import read_metadata

FLAGS = flags.FLAGS

flags.DEFINE_string("model", None, "Exported .tflite, .onnx or OpenVINO .xml file.")
flags.DEFINE_string("image", None, "Image file to run the model on.")
flags.DEFINE_string("output", None, "PNG file to write with the predictions drawn.")
flags.DEFINE_float(
    "score_threshold",
    None,
    "Detections below this score are dropped (default: the model's metadata); for "
    "pose, keypoints below it are not drawn.",
)
flags.DEFINE_string(
    "boxes",
    None,
    "Pose: person boxes 'x1,y1,x2,y2;...' in image pixels (default: the whole image).",
)
flags.DEFINE_integer("num_threads", 2, "Runtime threads.", lower_bound=1)
flags.mark_flags_as_required(["model", "image", "output"])


def parse_boxes(text: str) -> np.ndarray:
    """'x1,y1,x2,y2;...' -> float [N, 4]; raises app.UsageError on a malformed box."""
    boxes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            box = [float(v) for v in part.split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise app.UsageError(f"--boxes: {part!r} is not x1,y1,x2,y2 (four numbers)")
        boxes.append(box)
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def read_image(path: str, exif_transpose: bool) -> np.ndarray:
    """The --image file decoded; cli.InputError naming it when it is missing or not an image."""
    if not os.path.isfile(path):
        raise cli.InputError(f"--image={path}: no such file")
    try:
        return decode_image(path, exif_transpose)
    except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated data
        raise cli.InputError(f"--image={path} is not an image PIL can decode ({e})") from e


def draw_detections(image, detections, names):
    boxes = np.array([d["box"] for d in detections], np.float32).reshape(-1, 4)
    return draw_boxes(
        image,
        boxes,
        [d["label"] for d in detections],
        names,
        scores=[d["score"] for d in detections],
    )


def draw_people(image, people, names, skeleton, threshold):
    picture = draw_boxes(
        image,
        np.array([p["box"] for p in people]).reshape(-1, 4),
        [0] * len(people),
        names,
        scores=[p["score"] for p in people],
    )
    return draw_keypoints(
        picture, np.array([p["keypoints"] for p in people]), skeleton, threshold=threshold
    )


def predict(predictor, image, score_threshold=None, person_boxes=None):
    """(results as JSON-ready dicts, picture with them drawn) for one image."""
    names = predictor.metadata["labels"]["names"]
    if predictor.task == "detection":
        detections = predictor.detect(image, score_threshold=score_threshold)
        return detections, draw_detections(image, detections, names)
    people = predictor.keypoints(image, person_boxes)
    decode = predictor.decode_parameters
    threshold = decode["keypoint_score_threshold"] if score_threshold is None else score_threshold
    picture = draw_people(image, people, names, decode["skeleton"], threshold)
    return [dict(p, keypoints=p["keypoints"].round(2).tolist()) for p in people], picture


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.output.lower().endswith(".png"):
        raise app.UsageError(f"--output={FLAGS.output} must be a .png file")
    boxes = parse_boxes(FLAGS.boxes) if FLAGS.boxes else None
    folder = os.path.dirname(os.path.abspath(FLAGS.output))
    if not os.path.isdir(folder):
        raise cli.InputError(f"--output={FLAGS.output}: no folder {folder} to write it in")
    # Both inputs checked before a runtime loads (LiteRT prints a line of its own).
    if not os.path.isfile(FLAGS.model):
        raise cli.InputError(f"--model={FLAGS.model}: no such file")
    metadata = read_metadata(FLAGS.model)
    image = read_image(FLAGS.image, metadata["input"]["exif_transpose"])
    predictor = runtime.load(FLAGS.model, num_threads=FLAGS.num_threads)
    results, picture = predict(predictor, image, FLAGS.score_threshold, boxes)
    png = io.BytesIO()
    picture.save(png, format="PNG")
    atomic_write(FLAGS.output, png.getvalue())
    for result in results:
        print(json.dumps(result))
    print(
        f"{len(results)} {'detections' if predictor.task == 'detection' else 'people'} "
        f"-> {FLAGS.output}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    cli.run(main)
