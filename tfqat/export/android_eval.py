"""Runs model_int8_android.tflite with LiteRT on a COCO val set: results, mAP, latency, report row.

No TensorFlow. Images are letterboxed exactly as for every other artifact
(`tfqat.evaluation.letterboxed_batches`), the file's in-graph NMS does the rest, and its boxes
(relative to the model input) are mapped back through the letterbox, so the only difference
from `tflite_int8` + our numpy post-processor is the in-graph decode and NMS.

    python -m tfqat.export.android_eval --model=runs/x/export/model_int8_android.tflite \
        [--val_annotations=JSON --val_images=DIR] [--output=results.json]
"""

import time

import numpy as np

from tfqat.data.letterbox import boxes_to_image
from tfqat.evaluation import coco_metrics, letterboxed_batches
from tfqat.export.metadata import read_metadata
from tfqat.export.tflite_runner import TFLiteRunner
from tfqat.postprocess.detection import to_coco_results

__all__ = ["AndroidDetector", "android_results", "interleaved_median_ms", "relative_to_xyxy"]

ARTIFACT = ("tflite_int8_android", "tflite", "int8")


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
            results.append((relative_to_xyxy(b[:n], self.input_size), s[:n].astype(np.float32),
                            c[:n].astype(np.int64)))
        return results


def android_results(detector: AndroidDetector, dataset, batch_size: int = 16,
                    limit=None) -> list[dict]:
    """COCO results records of the Android file over `dataset` (a tfqat CocoDataset)."""
    results = []
    for samples, images, letterboxes in letterboxed_batches(dataset, detector.input_size,
                                                            batch_size, limit):
        for sample, lb, (boxes, scores, labels) in zip(samples, letterboxes,
                                                       detector.detect(images)):
            boxes = boxes_to_image(boxes, lb)
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, sample.width)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, sample.height)
            results += to_coco_results(sample.image_id, boxes, scores, labels,
                                       dataset.category_ids)
    return results


def interleaved_median_ms(calls: dict, rounds: int = 200, warmup: int = 10) -> dict:
    """{name: median ms} of zero-argument callables timed call by call, in turns, so load
    from other processes hits them alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: round(1e3 * float(np.median(t)), 3) for name, t in times.items()}


def android_row(task, path: str, model_dir: str, results=None) -> dict:
    """The tflite_int8_android report row (as `tfqat.exporting.evaluate_exported` writes the
    others), its predictions written to predictions/tflite_int8_android.json."""
    from tfqat.exporting import evaluated_row

    if results is None:
        results = android_results(AndroidDetector(path), task.val_set)
    with open(path, "rb") as f:
        data = f.read()
    name, fmt, precision = ARTIFACT
    return evaluated_row(task, None, name, path, fmt, precision, data, 0.0, model_dir, results)


def _main(argv):
    import json

    from absl import flags

    from tfqat.data.coco import load_coco
    from tfqat.fileio import atomic_write

    options = flags.FLAGS
    detector = AndroidDetector(options.model)
    dataset = load_coco(options.val_annotations, options.val_images, "detection")
    results = android_results(detector, dataset)
    if options.output:
        atomic_write(options.output, json.dumps(results))
    metrics = coco_metrics(dataset.annotation_file, results, "bbox")
    print(json.dumps({"model": options.model, "images": len(dataset.samples), **metrics}))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "model_int8_android.tflite")
    flags.DEFINE_string("val_annotations", None, "COCO instances JSON of the val set")
    flags.DEFINE_string("val_images", None, "image folder of the val set")
    flags.DEFINE_string("output", None, "where to write the COCO results (optional)")
    flags.mark_flags_as_required(["model", "val_annotations", "val_images"])
    app.run(_main)
