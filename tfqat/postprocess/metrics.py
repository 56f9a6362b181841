"""Task metrics with pycocotools: what report.json's numbers are, recomputable from the
predictions file and the annotation file alone; and their spread over resampled val images."""

import contextlib
import io

import numpy as np

# Task -> pycocotools iouType; iouType -> report.json's metric names, the primary one first.
IOU_TYPES = {"detection": "bbox", "pose": "keypoints"}
METRIC_NAMES = {"bbox": ("mAP50_95", "mAP50"), "keypoints": ("AP", "AP50")}


def format_metrics(metrics: dict) -> str:
    """ "mAP50_95=0.4959 mAP50=0.6543": how every command prints a metrics dict."""
    return " ".join(f"{name}={value:.4f}" for name, value in metrics.items())


def coco_metrics(annotation_file: str, results: list, iou_type: str, image_ids=None) -> dict:
    """mAP50_95/mAP50 (bbox) or AP/AP50 (keypoints) from pycocotools, quietly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = METRIC_NAMES[iou_type]
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


def bootstrap_primary_metric(
    annotation_file: str, results_by_name: dict, iou_type: str, resamples: int, seed: int = 0
) -> dict:
    """{name: the primary metric (mAP50_95 or AP) of its results on each of `resamples` val
    sets drawn from the val images with replacement}: the same draws for every name (paired).

    pycocotools matches each image once (`COCOeval.evaluate`); only its `accumulate` depends on
    the image set. That runs here vectorised, for the one area range and detection limit of the
    primary metric: pycocotools' own `accumulate` loops in Python over every detection (0.14 s
    per call on 300 val images of the main job, 90,000 detections; measured), which would make
    hundreds of resamples of several models cost minutes. `tests/test_verdict.py` checks that it
    gives pycocotools' number on the whole val set and on a resample.
    """
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
    count = len(gt.imgs)
    draws = np.random.default_rng(seed).integers(0, count, (resamples, count))
    values = {}
    for name, results in results_by_name.items():
        if not results:
            values[name] = np.zeros(resamples)
            continue
        categories, rec_thrs = _matched_categories(gt, results, iou_type)
        values[name] = np.array([_primary_ap(categories, rec_thrs, images) for images in draws])
    return values


def _matched_categories(gt, results, iou_type):
    """pycocotools' per-image matching, for the primary metric's area range ("all") and
    detection limit only, as one _Category per category; and the recall thresholds."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        params = evaluator.params
        params.areaRng, params.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]
        params.maxDets = params.maxDets[-1:]
        evaluator.evaluate()
    count = len(params.imgIds)
    per_category = [
        evaluator.evalImgs[k * count : (k + 1) * count] for k in range(len(params.catIds))
    ]
    return [_Category(e, params.maxDets[0]) for e in per_category], params.recThrs


class _Category:
    """One category's matched detections over the val images, concatenated image after image."""

    def __init__(self, per_image: list, max_det: int):
        present = [e for e in per_image if e is not None]
        self.detections = np.array(
            [len(e["dtScores"][:max_det]) if e else 0 for e in per_image], np.int64
        )
        self.starts = np.cumsum(self.detections) - self.detections
        self.ground_truth = np.array(
            [np.count_nonzero(np.asarray(e["gtIgnore"]) == 0) if e else 0 for e in per_image]
        )
        iou_thresholds = len(present[0]["dtMatches"]) if present else 0
        self.scores = np.concatenate([[]] + [e["dtScores"][:max_det] for e in present])
        self.matched = np.concatenate(
            [np.zeros((iou_thresholds, 0))] + [e["dtMatches"][:, :max_det] for e in present], 1
        ).astype(bool)
        self.ignored = np.concatenate(
            [np.zeros((iou_thresholds, 0), bool)] + [e["dtIgnore"][:, :max_det] for e in present],
            1,
        )

    def precision(self, images: np.ndarray, rec_thrs: np.ndarray):
        """[iou threshold, recall threshold] interpolated precision over the detections of
        `images` (indices, repeats allowed), as pycocotools' accumulate; None without any
        ground truth."""
        ground_truth = self.ground_truth[images].sum()
        if ground_truth == 0:
            return None
        counts = self.detections[images]
        # The detections of each drawn image, in the drawn order (pycocotools concatenates them
        # so before its stable sort, which then orders equal scores the same way).
        firsts = np.repeat(self.starts[images] - (np.cumsum(counts) - counts), counts)
        picked = firsts + np.arange(counts.sum())
        order = picked[np.argsort(-self.scores[picked], kind="mergesort")]
        matched, ignored = self.matched[:, order], self.ignored[:, order]
        counted = ~ignored
        tp = np.cumsum(matched & counted, axis=1)
        fp = np.cumsum(counted, axis=1) - tp
        recall = tp / ground_truth
        precision = tp / (fp + tp + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        result = np.zeros((len(matched), len(rec_thrs)))
        for t in range(len(matched)):
            at = np.searchsorted(recall[t], rec_thrs, side="left")
            inside = at < precision.shape[1]
            result[t, inside] = precision[t, at[inside]]
        return result


def _primary_ap(categories, rec_thrs, images) -> float:
    """pycocotools' stats[0] over the drawn `images`: mean precision over IoU thresholds,
    recall thresholds and the categories with ground truth among them."""
    found = [c.precision(images, rec_thrs) for c in categories]
    found = [p for p in found if p is not None]
    return float(np.mean(found)) if found else 0.0
