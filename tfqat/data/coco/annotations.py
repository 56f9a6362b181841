"""Each annotation checked against its image and category: box (clipped to the image), crowd
flag and, for pose, keypoints. Problems are collected, not raised."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from tfqat.data.coco.records import (
    _Categories,
    _duplicates,
    _Image,
    _is_in,
    _is_int,
    _is_number,
    _json_type,
    _missing_keys,
    _Problems,
)

_REQUIRED_ANNOTATION_KEYS = {
    "detection": ("id", "image_id", "category_id", "bbox"),
    "pose": ("id", "image_id", "category_id", "bbox", "keypoints"),
}


@dataclass
class _Target:
    ann_id: int
    label: int
    box: tuple[float, float, float, float]  # xyxy, clipped to the image
    clipped: bool
    keypoints: np.ndarray | None  # [K, 3] for pose


@dataclass
class _AnnotationCounts:
    crowd_skipped: int = 0
    dropped: int = 0
    clipped: int = 0


def _parse_annotations(
    raw: list,
    task: str,
    images: dict[int, _Image],
    broken_image_ids: set[int],
    categories: _Categories,
    problems: _Problems,
) -> tuple[dict[int, list[_Target]], _AnnotationCounts]:
    """Targets (non-crowd, valid annotations) per image id, in file order."""
    int_ids = [a["id"] for a in raw if isinstance(a, dict) and _is_int(a.get("id"))]
    for dup in _duplicates(int_ids):
        problems.file("duplicate_id", f"duplicate annotation id {dup}")

    targets: dict[int, list[_Target]] = {}
    counts = _AnnotationCounts()
    for i, ann in enumerate(raw):
        found: list[tuple[str, str]] = []
        result = _parse_annotation(i, ann, task, images, broken_image_ids, categories, found)
        for kind, text in found:
            problems.annotation(kind, text)
        if found:
            counts.dropped += 1
        elif result == "crowd":
            counts.crowd_skipped += 1
        elif result is not None:
            targets.setdefault(ann["image_id"], []).append(result)
            counts.clipped += result.clipped
    return targets, counts


def _parse_annotation(
    index: int,
    ann: object,
    task: str,
    images: dict[int, _Image],
    broken_image_ids: set[int],
    categories: _Categories,
    found: list[tuple[str, str]],
) -> _Target | str | None:
    """One annotation: a _Target, "crowd", or None when it has problems (appended to `found`)
    or belongs to an image or category already reported as broken."""
    if not isinstance(ann, dict):
        text = f"annotations[{index}]: must be an object, got {_json_type(ann)}"
        found.append(("bad_annotation", text))
        return None
    ref = f"annotation {ann['id']!r}" if "id" in ann else f"annotations[{index}]"
    missing = _missing_keys(ann, _REQUIRED_ANNOTATION_KEYS[task])
    if missing:
        found.append(("missing_key", f"{ref}: missing key(s) {missing}"))
        return None
    if not _is_int(ann["id"]):
        found.append(("bad_annotation", f"{ref}: id must be an integer"))
        return None

    image_id, category_id = ann["image_id"], ann["category_id"]
    if _is_in(image_id, broken_image_ids) or _is_in(category_id, categories.broken_ids):
        return None
    if not _is_in(image_id, images):
        found.append(("unknown_image", f"{ref}: unknown image id {image_id!r}"))
        return None
    image = images[image_id]
    ref = f"{ref} ({image.ref()})"
    if not _is_in(category_id, categories.index):
        found.append(("unknown_category", f"{ref}: unknown category id {category_id!r}"))

    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        found.append(("bad_annotation", f"{ref}: iscrowd must be 0 or 1, got {crowd!r}"))
    found.extend(("bad_box", f"{ref}: {text}") for text in _bbox_problems(ann["bbox"]))
    if found:
        return None
    box, clipped = _clip_box(ann["bbox"], image.width, image.height)
    if box is None:
        found.append(
            (
                "bad_box",
                f"{ref}: bbox {ann['bbox']} lies outside the {image.width}x{image.height} image",
            )
        )
        return None
    if crowd:
        return "crowd"

    keypoints = None
    if task == "pose":
        keypoints, texts = _parse_keypoints(ann["keypoints"], categories.keypoint_names)
        found.extend(("bad_keypoints", f"{ref}: {text}") for text in texts)
        if texts:
            return None
    return _Target(ann["id"], categories.index[category_id], box, clipped, keypoints)


def _bbox_problems(bbox: object) -> list[str]:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return [f"bbox is not 4 numbers: {_short_repr(bbox)}"]
    texts = [f"bbox {name} is {v!r}" for name, v in zip("xy", bbox[:2]) if not math.isfinite(v)]
    for name, v in zip(("width", "height"), bbox[2:]):
        if not (math.isfinite(v) and v > 0):
            texts.append(f"bbox {name} is {v!r}")
    return texts


def _short_repr(value: object, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip_box(bbox: list, width: int, height: int) -> tuple[tuple[float, ...] | None, bool]:
    """COCO xywh -> xyxy clipped to the image; None when nothing of the box is inside it."""
    x, y, w, h = (float(v) for v in bbox)
    x1, x2 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
    y1, y2 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None, True
    return (x1, y1, x2, y2), (x1, y1, x2, y2) != (x, y, x + w, y + h)


def _parse_keypoints(values: object, names: list[str]) -> tuple[np.ndarray | None, list[str]]:
    k = len(names)
    if not (isinstance(values, list) and len(values) == 3 * k):
        got = f"{len(values)} values" if isinstance(values, list) else _json_type(values)
        return None, [f"keypoints has {got}, expected {3 * k} (3 x {k} keypoints)"]
    if not all(_is_number(v) for v in values):
        return None, [f"keypoints are not all numbers: {_short_repr(values)}"]
    kps = np.asarray(values, np.float64).reshape(k, 3)
    texts = []
    bad = np.flatnonzero(~np.isfinite(kps).all(axis=1))
    if bad.size:
        i = int(bad[0])
        texts.append(
            f"{bad.size} keypoint(s) not finite, first {_keypoint_ref(i, names)}: "
            f"{values[3 * i : 3 * i + 3]}"
        )
    finite_v = np.where(np.isfinite(kps[:, 2]), kps[:, 2], 0)
    bad = np.flatnonzero(~np.isin(finite_v, (0, 1, 2)))
    if bad.size:
        i = int(bad[0])
        texts.append(
            f"{bad.size} keypoint(s) with visibility not in {{0, 1, 2}}, first "
            f"{_keypoint_ref(i, names)}: visibility {values[3 * i + 2]!r}"
        )
    return (None if texts else kps.astype(np.float32)), texts


def _keypoint_ref(index: int, names: list[str]) -> str:
    return f"keypoint {index} ('{names[index]}')"
