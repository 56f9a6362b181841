"""Runs model_int8_android.tflite with LiteRT on a COCO val set: results, mAP, latency, report row.

No TensorFlow. Images are letterboxed exactly as for every other artifact
(`tfqat.evaluation.letterboxed_batches`), the file's in-graph NMS does the rest, and its boxes
(relative to the model input) are mapped back through the letterbox, so the only difference
from `tflite_int8` + our numpy post-processor is the in-graph decode and NMS.

    python -m tfqat.export.android_eval --model=runs/x/export/model_int8_android.tflite \
        [--val_annotations=JSON --val_images=DIR] [--output=results.json]

(the run's val set by default), or `android_row` for the report row.
"""

import time

import numpy as np

from tfqat.data.letterbox import boxes_to_image
from tfqat.evaluation import coco_metrics, letterboxed_batches
from tfqat.export.metadata import read_metadata
from tfqat.export.tflite_runner import TFLiteRunner
from tfqat.postprocess.detection import to_coco_results

__all__ = ["AndroidDetector", "android_latency", "android_results", "android_row",
           "interleaved_median_ms", "relative_to_xyxy"]

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


def _cpu() -> str:
    """The CPU's model name and the ISA extensions that decide int8 speed."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return "unknown CPU"
    name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    flags = next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{name} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def android_latency(android_path: str, int8_path: str, image, threads: int = 2,
                    rounds: int = 200) -> dict:
    """Median ms of one image, interleaved: the Android file (decode and NMS in the graph),
    model_int8.tflite + tfqat's numpy post-processor, and model_int8.tflite's invoke alone, on
    LiteRT (default XNNPACK)."""
    from tfqat.postprocess.detection import decode, nms

    android = AndroidDetector(android_path, num_threads=threads)
    int8 = TFLiteRunner(int8_path, num_threads=threads)
    image = np.asarray(image, np.float32)[None]

    def int8_with_numpy_postprocess():
        boxes, scores = decode(int8(image), android.input_size)
        nms(boxes[0], scores[0])

    medians = interleaved_median_ms({"tflite_int8_android": lambda: android.detect(image),
                                     "tflite_int8_numpy_postprocess": int8_with_numpy_postprocess,
                                     "tflite_int8_invoke_only": lambda: int8.raw(image)},
                                    rounds=rounds)
    return {"median_ms": medians, "threads": threads, "runtime": "ai_edge_litert, XNNPACK",
            "cpu": _cpu()}


def android_row(task, path: str, model_dir: str, results=None) -> dict:
    """The tflite_int8_android report row (as `tfqat.exporting.evaluate_exported` writes the
    others: predictions/tflite_int8_android.json, size, metrics) plus its latency next to
    tflite_int8 + numpy post-processing."""
    import os

    from tfqat.exporting import evaluated_row, weight_sparsity

    if results is None:
        results = android_results(AndroidDetector(path), task.val_set)
    with open(path, "rb") as f:
        data = f.read()
    name, fmt, precision = ARTIFACT
    row = evaluated_row(task, None, name, path, fmt, precision, data, weight_sparsity(path),
                        model_dir, results)
    first_image = next(letterboxed_batches(task.val_set, task.config.input_size, 1, limit=1))[1]
    int8_path = os.path.join(os.path.dirname(path), "model_int8.tflite")
    row["latency"] = android_latency(path, int8_path, first_image[0])
    return row


def _val_set(model: str, annotations, images) -> tuple[str, str]:
    """The flags' val set, else the run's (the model in a run's export/ with a report.json)."""
    import os

    from tfqat import report as report_lib

    if not os.path.isfile(model):
        raise FileNotFoundError(f"{model}: no such file")
    if annotations and images:
        return annotations, images
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(model)))
    report = report_lib.load_report(run_dir)
    if annotations or images or report is None:
        raise ValueError("give --val_annotations and --val_images (the model is not in a run's "
                         "export/ with a report.json)")
    return report["val_annotations"], report["val_images"]


def _main(argv):
    import json
    import sys

    from absl import flags

    from tfqat.data.coco import load_coco
    from tfqat.fileio import atomic_write

    options = flags.FLAGS
    try:
        annotations, images = _val_set(options.model, options.val_annotations, options.val_images)
        dataset = load_coco(annotations, images, "detection")
        detector = AndroidDetector(options.model)
    except (ValueError, FileNotFoundError) as e:
        print(f"android_eval: {e}", file=sys.stderr)
        return 2
    results = android_results(detector, dataset)
    if options.output:
        atomic_write(options.output, json.dumps(results))
    metrics = coco_metrics(dataset.annotation_file, results, "bbox")
    print(json.dumps({"model": options.model, "images": len(dataset.samples), **metrics}))
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model", None, "model_int8_android.tflite")
    flags.DEFINE_string("val_annotations", None, "COCO instances JSON (default: the run's)")
    flags.DEFINE_string("val_images", None, "image folder of the val set (default: the run's)")
    flags.DEFINE_string("output", None, "where to write the COCO results (optional)")
    flags.mark_flag_as_required("model")
    app.run(_main)
