"""A loaded dataset's samples (its targets as numpy arrays) and the counts of its summary."""

from __future__ import annotations

import os

import numpy as np

from tfqat.data.coco.annotations import _AnnotationCounts, _Target
from tfqat.data.coco.dataset import Sample
from tfqat.data.coco.records import _Categories, _Image

# Upper edges (sqrt of the box area, in image pixels) of the box size histogram in `stats`.
BOX_SIZE_EDGES = (8, 16, 32, 64, 128, 256)
BOX_SIZE_LABELS = ("<8", "8-16", "16-32", "32-64", "64-128", "128-256", ">=256")


def _make_sample(
    image: _Image, image_dir: str, targets: list[_Target], categories: _Categories
) -> Sample:
    k = len(categories.keypoint_names)
    keypoints = np.zeros((len(targets), k, 3), np.float32)
    for row, target in zip(keypoints, targets):
        if target.keypoints is not None:
            row[:] = target.keypoints
    return Sample(
        image_id=image.id,
        file_name=image.file_name,
        path=os.path.join(image_dir, image.file_name),
        width=image.width,
        height=image.height,
        boxes=np.array([t.box for t in targets], np.float32).reshape(-1, 4),
        labels=np.array([t.label for t in targets], np.int32),
        ann_ids=np.array([t.ann_id for t in targets], np.int64),
        keypoints=keypoints,
    )


def _stats(
    samples: list[Sample], categories: _Categories, num_annotations: int, counts: _AnnotationCounts
) -> dict:
    """Counts for a summary. `tiny_boxes`: a side under 1 px; `box_sizes`: histogram of
    sqrt(area) in image pixels; `clipped_boxes`: boxes that reached outside the image."""
    boxes = np.concatenate([s.boxes for s in samples]) if samples else np.zeros((0, 4), np.float32)
    labels = np.concatenate([s.labels for s in samples]) if samples else np.zeros((0,), np.int32)
    wh = boxes[:, 2:] - boxes[:, :2]
    buckets = np.searchsorted(BOX_SIZE_EDGES, np.sqrt(wh[:, 0] * wh[:, 1]), side="right")
    per_label = np.bincount(labels, minlength=len(categories.ids))
    stats = {
        "images": len(samples),
        "annotations": num_annotations,
        "targets": int(len(boxes)),
        "crowd_skipped": counts.crowd_skipped,
        "dropped_annotations": counts.dropped,
        "clipped_boxes": counts.clipped,
        "empty_images": sum(1 for s in samples if len(s.boxes) == 0),
        "per_category": {cat_id: int(n) for cat_id, n in zip(categories.ids, per_label)},
        "box_sizes": dict(
            zip(BOX_SIZE_LABELS, np.bincount(buckets, minlength=len(BOX_SIZE_LABELS)).tolist())
        ),
        "tiny_boxes": int(np.count_nonzero(wh.min(axis=1) < 1)) if len(wh) else 0,
    }
    if categories.keypoint_names:
        visible = [int(np.count_nonzero((s.keypoints[..., 2] > 0).any(axis=1))) for s in samples]
        stats["no_keypoints"] = stats["targets"] - sum(visible)
    return stats
