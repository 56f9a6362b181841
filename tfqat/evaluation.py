"""COCO evaluation of any backend with pycocotools, through the shared numpy post-processors.

A backend is a `predict_fn(images) -> list of raw head arrays`, where `images` is a float32
batch of letterboxed pixels 0..255. Nothing here imports TensorFlow.
"""

import contextlib
import io
import json

import numpy as np

from tfqat.data.coco import CocoDataset, decode_image
from tfqat.data.letterbox import letterbox_image
from tfqat.fileio import atomic_write


def letterboxed_batches(dataset: CocoDataset, input_size, batch_size: int, limit=None):
    """Yields (samples, float32 images [B,H,W,3], letterboxes) in dataset order."""
    samples = dataset.samples[:limit] if limit else dataset.samples
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images, boxes = [], []
        for s in chunk:
            image, lb = letterbox_image(decode_image(s.path, dataset.exif_transpose), *input_size)
            images.append(image)
            boxes.append(lb)
        yield chunk, np.stack(images).astype(np.float32), boxes


def detection_results(
    predict_fn,
    dataset: CocoDataset,
    input_size,
    *,
    batch_size=16,
    score_threshold=0.001,
    iou_threshold=0.7,
    max_detections=300,
    limit=None,
):
    """COCO results records (category ids of the dataset) for every val image."""
    from tfqat.postprocess import detection as post

    results = []
    for samples, images, letterboxes in letterboxed_batches(dataset, input_size, batch_size, limit):
        outputs = predict_fn(images)
        detections = post.postprocess(
            outputs,
            input_size,
            letterboxes,
            [(s.height, s.width) for s in samples],
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        for s, (boxes, scores, labels) in zip(samples, detections):
            results += post.to_coco_results(s.image_id, boxes, scores, labels, dataset.category_ids)
    return results


def coco_metrics(annotation_file: str, results: list, iou_type: str, image_ids=None) -> dict:
    """mAP50_95/mAP50 (bbox) or AP/AP50 (keypoints) from pycocotools, quietly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = ("mAP50_95", "mAP50") if iou_type == "bbox" else ("AP", "AP50")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        if not results:
            return {names[0]: 0.0, names[1]: 0.0}
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {names[0]: float(evaluator.stats[0]), names[1]: float(evaluator.stats[1])}


def write_results(path: str, results: list):
    atomic_write(path, json.dumps(results))
