"""Task metrics with pycocotools: what report.json's numbers are, recomputable from the
predictions file and the annotation file alone."""

import contextlib
import io


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
