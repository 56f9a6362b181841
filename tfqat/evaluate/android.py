"""model_int8_android.tflite on a val set: COCO results, and its latency beside
model_int8.tflite + the numpy post-processor.

Images are letterboxed exactly as for every other artifact, the file's in-graph NMS does the
rest, and its boxes are mapped back through the letterbox, so the only difference from
`tflite_int8` + our post-processor is the in-graph decode and NMS.
"""

import numpy as np

from tfqat.data.letterbox import boxes_to_image, letterboxed_batches
from tfqat.evaluate.timing import cpu_description, interleaved_times, time_summary
from tfqat.postprocess.detection import to_coco_results
from tfqat.runtime.android import AndroidDetector
from tfqat.runtime.tflite import TFLiteRunner


def android_latency(
    android_path: str, int8_path: str, image, threads: int = 2, rounds: int = 200
) -> dict:
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

    times = interleaved_times(
        {
            "tflite_int8_android": lambda: android.detect(image),
            "tflite_int8_numpy_postprocess": int8_with_numpy_postprocess,
            "tflite_int8_invoke_only": lambda: int8.raw(image),
        },
        rounds=rounds,
    )
    return {
        "median_ms": {name: round(time_summary(t)["median_ms"], 3) for name, t in times.items()},
        "threads": threads,
        "runtime": "ai_edge_litert, XNNPACK",
        "cpu": cpu_description(),
    }


def android_results(
    detector: AndroidDetector, dataset, batch_size: int = 16, limit=None
) -> list[dict]:
    """COCO results records of the Android file over `dataset` (a tfqat CocoDataset)."""
    results = []
    for samples, images, letterboxes in letterboxed_batches(
        dataset, detector.input_size, batch_size, limit
    ):
        for sample, lb, (boxes, scores, labels) in zip(
            samples, letterboxes, detector.detect(images)
        ):
            boxes = boxes_to_image(boxes, lb)
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, sample.width)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, sample.height)
            results += to_coco_results(sample.image_id, boxes, scores, labels, dataset.category_ids)
    return results
