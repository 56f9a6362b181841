"""model_int8_android.tflite on a val set: COCO results, and its latency beside
model_int8.tflite + the numpy post-processor.

Images are letterboxed exactly as for every other artifact, the file's in-graph NMS does the
rest, and its boxes are mapped back through the letterbox, so the only difference from
`tflite_int8` + our post-processor is the in-graph decode and NMS.
"""

import time

import numpy as np

from tfqat.data.letterbox import boxes_to_image, letterboxed_batches
from tfqat.postprocess.detection import to_coco_results
from tfqat.runtime.android import AndroidDetector
from tfqat.runtime.tflite import TFLiteRunner


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

    medians = interleaved_median_ms(
        {
            "tflite_int8_android": lambda: android.detect(image),
            "tflite_int8_numpy_postprocess": int8_with_numpy_postprocess,
            "tflite_int8_invoke_only": lambda: int8.raw(image),
        },
        rounds=rounds,
    )
    return {
        "median_ms": medians,
        "threads": threads,
        "runtime": "ai_edge_litert, XNNPACK",
        "cpu": _cpu(),
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
