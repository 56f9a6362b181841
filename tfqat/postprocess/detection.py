"""Decoding and NMS for the YOLO detector, in numpy only.

Shared by every backend (Keras, TFLite, OpenVINO, ONNX) and run on devices without TensorFlow:
nothing here, nor anything it imports, may import TensorFlow.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from tfqat.data.letterbox import Letterbox, boxes_to_image, letterboxed_batches
from tfqat.models.yolo_spec import OUTPUT_NAMES, STRIDES, check_input_size, make_anchors

__all__ = ["decode", "nms", "postprocess", "to_coco_results", "OUTPUT_NAMES", "STRIDES"]

_MAX_CANDIDATES = 3000


def _ordered_outputs(outputs) -> list[np.ndarray]:
    """Outputs as a list in OUTPUT_NAMES order.

    A mapping may use the exact names, or names that contain them once (TF-MOT prefixes
    "quant_", so a QAT model's TFLite signature says "quant_box_p3").
    """
    if not isinstance(outputs, Mapping):
        outputs = list(outputs)
        if len(outputs) != len(OUTPUT_NAMES):
            raise ValueError(
                f"expected {len(OUTPUT_NAMES)} outputs {OUTPUT_NAMES}, got {len(outputs)}"
            )
        return [np.asarray(o) for o in outputs]
    ordered = []
    for name in OUTPUT_NAMES:
        keys = [name] if name in outputs else [k for k in outputs if name in k]
        if len(keys) != 1:
            raise ValueError(f"cannot find output {name!r} among {sorted(outputs)}")
        ordered.append(np.asarray(outputs[keys[0]]))
    return ordered


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def _sigmoid(x):
    # exp of a negative number only: no overflow warnings for large logits.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def decode(outputs, input_size, reg_max=16, strides=STRIDES):
    """Raw head tensors -> boxes and class probabilities for every anchor.

    Args:
      outputs: dict name -> array, or a list in OUTPUT_NAMES order; each [B, H/s, W/s, C]
        (a missing batch dimension is added). Float values (dequantize int8 outputs first).
      input_size: (height, width) of the model input.

    Returns:
      boxes: float32 [B, A, 4] xyxy in model-input pixels.
      scores: float32 [B, A, num_classes], after sigmoid.
    """
    box_logits, cls_logits = _head_logits(outputs, input_size, reg_max, strides)
    points, anchor_strides = make_anchors(check_input_size(input_size), strides)
    return _boxes(box_logits, points, anchor_strides), _sigmoid(cls_logits)


def _head_logits(outputs, input_size, reg_max, strides):
    """Every level's outputs concatenated over anchors: box logits [B, A, 4, reg_max] and class
    logits [B, A, C], float32."""
    height, width = check_input_size(input_size)
    tensors = [t if t.ndim == 4 else t[None] for t in _ordered_outputs(outputs)]
    box_levels, cls_levels = [], []
    for level, stride in enumerate(strides):
        box, cls = tensors[2 * level], tensors[2 * level + 1]
        grid = (height // stride, width // stride)
        if box.shape[1:] != (*grid, 4 * reg_max) or cls.shape[1:3] != grid:
            raise ValueError(
                f"level stride {stride}: got box {box.shape}, cls {cls.shape}; expected "
                f"[B, {grid[0]}, {grid[1]}, {4 * reg_max}] and [B, {grid[0]}, {grid[1]}, C] "
                f"for input {height}x{width}, reg_max {reg_max}"
            )
        batch = box.shape[0]
        box_levels.append(box.reshape(batch, -1, 4, reg_max))
        cls_levels.append(cls.reshape(batch, -1, cls.shape[-1]))
    box_logits = np.concatenate(box_levels, axis=1).astype(np.float32)
    return box_logits, np.concatenate(cls_levels, axis=1).astype(np.float32)


def _boxes(box_logits, points, anchor_strides):
    """Distribution-focal box logits [..., A, 4, reg_max] -> xyxy boxes [..., A, 4]."""
    reg_max = box_logits.shape[-1]
    distances = _softmax(box_logits) @ np.arange(reg_max, dtype=np.float32)
    distances *= anchor_strides[:, None]
    return np.concatenate([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def _candidate_anchors(cls_logits, score_threshold):
    """Anchors whose best class may score above `score_threshold`: sigmoid(x) > t exactly when
    x > log(t / (1 - t)); a small margin keeps every anchor the float32 sigmoid could pass, and
    nms() applies the threshold itself. Decoding only these anchors' boxes is what makes a
    deployment threshold (0.25) cheap: the box softmax is most of the decode's time."""
    t = min(max(float(score_threshold), 1e-7), 1 - 1e-7)
    return np.nonzero(cls_logits.max(axis=-1) > np.log(t / (1 - t)) - 1e-3)[0]


def _greedy_nms(boxes, iou_threshold, max_keep):
    """Indices kept by greedy NMS over boxes already sorted by descending score."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.arange(len(boxes))
    keep = []
    while order.size and len(keep) < max_keep:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def nms(
    boxes,
    scores,
    iou_threshold=0.7,
    score_threshold=0.001,
    max_detections=300,
    class_agnostic=False,
    max_candidates=_MAX_CANDIDATES,
):
    """Greedy NMS for one image, per class unless class_agnostic.

    Every (anchor, class) pair above score_threshold is a candidate (multi-label, as
    Ultralytics' validation); the best max_candidates of them go into NMS. Per-class NMS shifts
    each class's boxes by its own offset so one greedy pass never compares different classes.

    Args:
      boxes: [A, 4] xyxy. scores: [A, C] probabilities.

    Returns:
      (boxes [K, 4] float32, scores [K] float32, labels [K] int64), by descending score.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    anchor_index, labels = np.nonzero(scores > score_threshold)
    candidate_scores = scores[anchor_index, labels]
    if candidate_scores.size > max_candidates:
        top = np.argpartition(-candidate_scores, max_candidates - 1)[:max_candidates]
        anchor_index, labels = anchor_index[top], labels[top]
        candidate_scores = candidate_scores[top]
    order = np.argsort(-candidate_scores, kind="stable")
    candidate_boxes, labels, candidate_scores = (
        boxes[anchor_index[order]],
        labels[order],
        candidate_scores[order],
    )
    if class_agnostic or candidate_boxes.size == 0:
        shifted = candidate_boxes
    else:
        span = float(np.abs(candidate_boxes).max()) * 2 + 1
        shifted = candidate_boxes + (labels.astype(np.float32) * span)[:, None]
    keep = _greedy_nms(shifted, iou_threshold, max_detections)
    return candidate_boxes[keep], candidate_scores[keep], labels[keep].astype(np.int64)


def postprocess(
    outputs,
    input_size,
    letterboxes: Sequence[Letterbox],
    image_sizes: Sequence[tuple[int, int]],
    iou_threshold=0.7,
    score_threshold=0.001,
    max_detections=300,
    class_agnostic=False,
    reg_max=16,
    strides=STRIDES,
):
    """Decode + NMS + map back through the letterbox, per image.

    Args:
      outputs: as for `decode`, batch B.
      input_size: (height, width) of the model input.
      letterboxes: B Letterbox records, one per image (from `tfqat.data.letterbox`).
      image_sizes: B original (height, width); boxes are clipped to them.

    Returns:
      A list of B tuples (boxes [K, 4] xyxy in original image pixels, scores [K], labels [K]).
    """
    box_logits, cls_logits = _head_logits(outputs, input_size, reg_max, strides)
    if not len(letterboxes) == len(image_sizes) == len(box_logits):
        raise ValueError(
            f"batch of {len(box_logits)} outputs, {len(letterboxes)} letterboxes, "
            f"{len(image_sizes)} image sizes"
        )
    points, anchor_strides = make_anchors(check_input_size(input_size), strides)
    results = []
    for image_box_logits, image_cls_logits, lb, (height, width) in zip(
        box_logits, cls_logits, letterboxes, image_sizes
    ):
        anchors = _candidate_anchors(image_cls_logits, score_threshold)
        kept_boxes, kept_scores, labels = nms(
            _boxes(image_box_logits[anchors], points[anchors], anchor_strides[anchors]),
            _sigmoid(image_cls_logits[anchors]),
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            max_detections=max_detections,
            class_agnostic=class_agnostic,
        )
        kept_boxes = boxes_to_image(kept_boxes, lb)
        kept_boxes[:, 0::2] = np.clip(kept_boxes[:, 0::2], 0, width)
        kept_boxes[:, 1::2] = np.clip(kept_boxes[:, 1::2], 0, height)
        results.append((kept_boxes, kept_scores, labels))
    return results


def to_coco_results(image_id, boxes_xyxy, scores, labels, category_ids) -> list[dict]:
    """Detections of one image -> COCO result dicts (bbox [x, y, w, h], 2 decimals)."""
    if isinstance(image_id, np.generic):
        image_id = image_id.item()
    results = []
    for (x1, y1, x2, y2), score, label in zip(np.asarray(boxes_xyxy, np.float64), scores, labels):
        bbox = [x1, y1, x2 - x1, y2 - y1]
        results.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[int(label)]),
                "bbox": [round(float(v), 2) for v in bbox],
                "score": round(float(score), 5),
            }
        )
    return results


def detection_results(
    predict_fn,
    dataset,
    input_size,
    *,
    batch_size=16,
    score_threshold=0.001,
    iou_threshold=0.7,
    max_detections=300,
    limit=None,
):
    """COCO results records (category ids of the dataset) for every val image."""
    results = []
    for samples, images, letterboxes in letterboxed_batches(dataset, input_size, batch_size, limit):
        outputs = predict_fn(images)
        detections = postprocess(
            outputs,
            input_size,
            letterboxes,
            [(s.height, s.width) for s in samples],
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        for s, (boxes, scores, labels) in zip(samples, detections):
            results += to_coco_results(s.image_id, boxes, scores, labels, dataset.category_ids)
    return results
