"""COCO instances / person_keypoints reading and validation, in numpy + PIL only (no TensorFlow).

`load_coco` makes one pass over the annotation file and every image before any training starts,
collects every problem it finds, and raises a `DatasetError` listing all of them, so a user fixes a
dataset in one round instead of one crash per epoch. Each image is decoded fully once; the verdict
is cached per file (path, size, mtime, EXIF mode) so later passes over a large dataset are quick.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

TASKS = ("detection", "pose")
ANNOTATION_PROBLEM_MODES = ("error", "warn")
CACHE_FILE = "image_checks.json"
# Upper edges (sqrt of the box area, in image pixels) of the box size histogram in `stats`.
BOX_SIZE_EDGES = (8, 16, 32, 64, 128, 256)
BOX_SIZE_LABELS = ("<8", "8-16", "16-32", "32-64", "64-128", "128-256", ">=256")

_CACHE_VERSION = 1
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")
_REQUIRED_CATEGORY_KEYS = ("id", "name")
_REQUIRED_ANNOTATION_KEYS = {
    "detection": ("id", "image_id", "category_id", "bbox"),
    "pose": ("id", "image_id", "category_id", "bbox", "keypoints"),
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str
    fatal: bool


class DatasetError(ValueError):
    """Every fatal problem found in a dataset; str() lists them one per line, after their count."""

    def __init__(self, annotation_file: str, problems: list[Problem]):
        self.annotation_file = annotation_file
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        lines = [f"{count} in dataset {annotation_file}:"] + [p.message for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass
class Sample:
    image_id: int
    file_name: str
    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ann_ids: np.ndarray
    keypoints: np.ndarray


@dataclass
class CocoDataset:
    task: str
    annotation_file: str
    image_dir: str
    samples: list[Sample]
    category_ids: list[int]
    category_names: list[str]
    keypoint_names: list[str]
    skeleton: list[list[int]]
    warnings: list[Problem]
    stats: dict
    exif_transpose: bool = False  # the mode images were checked in; decode them the same way


def default_cache_dir() -> str:
    return os.environ.get("TFQAT_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfqat"
    )


def decode_image(path: str, exif_transpose: bool = False) -> np.ndarray:
    """Decodes an image file fully into an HxWx3 uint8 RGB array.

    EXIF orientation is ignored unless `exif_transpose` (as TensorFlow's decoders and COCO's
    declared sizes do). Truncated files raise unless PIL's LOAD_TRUNCATED_IMAGES was switched on.
    """
    with Image.open(path) as img:
        img.load()
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        return np.array(_to_rgb(img), dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency is only honoured through RGBA
    return img.convert("RGB")


def load_coco(
    annotation_file: str,
    image_dir: str,
    task: str,
    *,
    exif_transpose: bool = False,
    annotation_problems: str = "error",
    check_images: bool = True,
    cache_dir: str | None = None,
    num_workers: int = 2,
) -> CocoDataset:
    """Reads and validates a COCO instances (detection) or person_keypoints (pose) dataset.

    Raises DatasetError with every fatal problem. Per-annotation problems (bad box or keypoints,
    unknown image or category) are fatal unless `annotation_problems="warn"`, which drops those
    annotations and records them in `warnings`. `check_images=False` trusts the declared sizes and
    skips every image-file check.
    """
    _check_choice("task", task, TASKS)
    _check_choice("annotation_problems", annotation_problems, ANNOTATION_PROBLEM_MODES)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1; got {num_workers}")
    annotation_file = os.path.abspath(annotation_file)
    image_dir = os.path.abspath(image_dir)
    problems = _Problems(os.path.basename(annotation_file), downgrade=annotation_problems == "warn")

    data = _read_json(annotation_file, problems)
    sections = _top_level_sections(data, problems) if data is not None else None
    if sections is None:
        raise DatasetError(annotation_file, problems.fatal())
    raw_images, raw_annotations, raw_categories = sections

    categories = _parse_categories(raw_categories, task, problems)
    images, broken_image_ids = _parse_images(raw_images, problems)
    targets, counts = _parse_annotations(
        raw_annotations, task, images, broken_image_ids, categories, problems
    )
    if check_images:
        _check_image_files(images, image_dir, exif_transpose, cache_dir, num_workers, problems)
    if problems.fatal():
        raise DatasetError(annotation_file, problems.fatal())

    samples = [
        _make_sample(image, image_dir, targets.get(image.id, []), categories)
        for image in images.values()
    ]
    return CocoDataset(
        task=task,
        annotation_file=annotation_file,
        image_dir=image_dir,
        samples=samples,
        category_ids=categories.ids,
        category_names=categories.names,
        keypoint_names=categories.keypoint_names,
        skeleton=categories.skeleton,
        warnings=problems.warnings(),
        stats=_stats(samples, categories, len(raw_annotations), counts),
        exif_transpose=exif_transpose,
    )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class _Problems:
    """Collects problems, each message prefixed with the annotation file's name."""

    def __init__(self, file_label: str, downgrade: bool):
        self.file_label = file_label
        self.downgrade = downgrade
        self.items: list[Problem] = []

    def file(self, kind: str, text: str) -> None:
        self.items.append(Problem(kind, f"{self.file_label}: {text}", True))

    def annotation(self, kind: str, text: str) -> None:
        self.items.append(Problem(kind, f"{self.file_label}: {text}", not self.downgrade))

    def fatal(self) -> list[Problem]:
        return [p for p in self.items if p.fatal]

    def warnings(self) -> list[Problem]:
        return [p for p in self.items if not p.fatal]


# ---------------------------------------------------------------- JSON structure


def _read_json(path: str, problems: _Problems) -> object | None:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        problems.file("missing_file", f"annotation file not found: {path}")
    except json.JSONDecodeError as e:
        problems.file("bad_json", f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}")
    except UnicodeDecodeError as e:
        problems.file("bad_json", f"not UTF-8 text: {e}")
    except OSError as e:
        problems.file("unreadable_file", f"cannot read {path}: {e}")
    return None


def _top_level_sections(data: object, problems: _Problems) -> tuple[list, list, list] | None:
    if not isinstance(data, dict):
        problems.file("bad_structure", f"top level must be a JSON object, got {_json_type(data)}")
        return None
    for key in _REQUIRED_TOP_LEVEL:
        if key not in data:
            problems.file("missing_key", f"missing top-level key '{key}'")
        elif not isinstance(data[key], list):
            problems.file("bad_structure", f"'{key}' must be a list, got {_json_type(data[key])}")
    if problems.fatal():
        return None
    return data["images"], data["annotations"], data["categories"]


def _json_type(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), "a number")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_in(value: object, ids: set[int] | dict[int, object]) -> bool:
    """Membership for an id read from JSON, which may be of any (even unhashable) type."""
    return _is_int(value) and value in ids


def _missing_keys(record: dict, required: tuple[str, ...]) -> str:
    return ", ".join(f"'{k}'" for k in required if k not in record)


def _duplicates(ids: list[int]) -> list[int]:
    seen, dups = set(), []
    for i in ids:
        if i in seen and i not in dups:
            dups.append(i)
        seen.add(i)
    return dups


# ---------------------------------------------------------------- categories


@dataclass
class _Categories:
    ids: list[int]
    names: list[str]
    keypoint_names: list[str]
    skeleton: list[list[int]]
    index: dict[int, int]  # COCO category id -> contiguous label
    broken_ids: set[int]  # ids of records already reported as broken


def _parse_categories(raw: list, task: str, problems: _Problems) -> _Categories:
    valid: dict[int, dict] = {}
    broken: set[int] = set()
    for i, cat in enumerate(raw):
        ref = _category_ref(i, cat)
        text = _category_record_problem(cat, task)
        if text:
            problems.file("bad_category", f"{ref}: {text}")
            if isinstance(cat, dict) and _is_int(cat.get("id")):
                broken.add(cat["id"])
        elif cat["id"] in valid:
            broken.add(cat["id"])
        else:
            valid[cat["id"]] = cat
    int_ids = [c["id"] for c in raw if isinstance(c, dict) and _is_int(c.get("id"))]
    for dup in _duplicates(int_ids):
        problems.file("duplicate_id", f"duplicate category id {dup}")
    if not raw:
        problems.file("bad_structure", "'categories' is empty")

    ids = sorted(valid)
    keypoint_names, skeleton = [], []
    if task == "pose":
        keypoint_names, skeleton = _pose_definition([valid[i] for i in ids], problems)
    return _Categories(
        ids=ids,
        names=[str(valid[i]["name"]) for i in ids],
        keypoint_names=keypoint_names,
        skeleton=skeleton,
        index={cat_id: label for label, cat_id in enumerate(ids)},
        broken_ids=broken,
    )


def _category_ref(index: int, cat: object) -> str:
    if isinstance(cat, dict) and "id" in cat:
        return f"category {cat['id']!r}" + (f" ('{cat['name']}')" if "name" in cat else "")
    return f"categories[{index}]"


def _category_record_problem(cat: object, task: str) -> str | None:
    if not isinstance(cat, dict):
        return f"must be an object, got {_json_type(cat)}"
    missing = _missing_keys(
        cat, _REQUIRED_CATEGORY_KEYS + (("keypoints",) if task == "pose" else ())
    )
    if missing:
        return f"missing key(s) {missing}"
    if not _is_int(cat["id"]):
        return f"id must be an integer, got {cat['id']!r}"
    names = cat.get("keypoints")
    named = isinstance(names, list) and names and all(isinstance(n, str) for n in names)
    if task == "pose" and not named:
        return "'keypoints' must be a non-empty list of keypoint names"
    return None


def _pose_definition(cats: list[dict], problems: _Problems) -> tuple[list[str], list[list[int]]]:
    """The keypoint names and 1-based skeleton shared by every category of a pose dataset."""
    if not cats:
        return [], []
    names = list(cats[0]["keypoints"])
    for cat in cats[1:]:
        if list(cat["keypoints"]) != names:
            problems.file(
                "bad_category",
                f"category {cat['id']} ('{cat['name']}'): keypoints differ from those of category "
                f"{cats[0]['id']} ('{cats[0]['name']}'); every category must define the same "
                "keypoints",
            )
    skeleton = cats[0].get("skeleton", [])
    if not _valid_skeleton(skeleton, len(names)):
        problems.file(
            "bad_category",
            f"category {cats[0]['id']} ('{cats[0]['name']}'): 'skeleton' must be a list of [a, b] "
            f"pairs of 1-based keypoint indices in 1..{len(names)}",
        )
        return names, []
    return names, [list(pair) for pair in skeleton]


def _valid_skeleton(skeleton: object, num_keypoints: int) -> bool:
    def valid_pair(pair: object) -> bool:
        return (
            isinstance(pair, list)
            and len(pair) == 2
            and all(_is_int(i) and 1 <= i <= num_keypoints for i in pair)
        )

    return isinstance(skeleton, list) and all(valid_pair(pair) for pair in skeleton)


# ---------------------------------------------------------------- images


@dataclass
class _Image:
    id: int
    file_name: str
    width: int
    height: int

    def ref(self) -> str:
        return f"image {self.id} '{self.file_name}'"


def _parse_images(raw: list, problems: _Problems) -> tuple[dict[int, _Image], set[int]]:
    """Valid image records by id, in file order, and the ids of records reported as broken."""
    images: dict[int, _Image] = {}
    broken: set[int] = set()
    for i, record in enumerate(raw):
        ref = _image_record_ref(i, record)
        text = _image_record_problem(record)
        if text:
            problems.file("bad_image_record", f"{ref}: {text}")
            if isinstance(record, dict) and _is_int(record.get("id")):
                broken.add(record["id"])
        elif record["id"] in images:
            broken.add(record["id"])
        else:
            images[record["id"]] = _Image(
                record["id"], record["file_name"], int(record["width"]), int(record["height"])
            )
    int_ids = [r["id"] for r in raw if isinstance(r, dict) and _is_int(r.get("id"))]
    for dup in _duplicates(int_ids):
        problems.file("duplicate_id", f"duplicate image id {dup}")
    for dup in broken & images.keys():
        del images[dup]  # a duplicated id is ambiguous: no annotation can be attributed to it
    return images, broken


def _image_record_ref(index: int, record: object) -> str:
    if isinstance(record, dict) and "id" in record:
        name = f" '{record['file_name']}'" if "file_name" in record else ""
        return f"image {record['id']!r}{name}"
    return f"images[{index}]"


def _image_record_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"must be an object, got {_json_type(record)}"
    missing = _missing_keys(record, _REQUIRED_IMAGE_KEYS)
    if missing:
        return f"missing key(s) {missing}"
    if not _is_int(record["id"]):
        return f"id must be an integer, got {record['id']!r}"
    if not isinstance(record["file_name"], str) or not record["file_name"]:
        return f"file_name must be a non-empty string, got {record['file_name']!r}"
    for key in ("width", "height"):
        value = record[key]
        if not (_is_number(value) and math.isfinite(value) and value == int(value) and value > 0):
            return f"{key} must be a positive integer, got {value!r}"
    return None


# ---------------------------------------------------------------- annotations


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


# ---------------------------------------------------------------- image files


def _check_image_files(
    images: dict[int, _Image],
    image_dir: str,
    exif_transpose: bool,
    cache_dir: str | None,
    num_workers: int,
    problems: _Problems,
) -> None:
    """Decodes every image fully (or takes the cached verdict) and reports missing, undecodable,
    truncated and wrongly sized images."""
    if not images:
        return
    if not os.path.isdir(image_dir):
        problems.file("missing_file", f"image folder not found: {image_dir}")
        return
    _require_strict_decoding()
    cache = _CheckCache(cache_dir or default_cache_dir(), exif_transpose)
    records = list(images.values())
    paths = [os.path.join(image_dir, image.file_name) for image in records]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        try:
            for image, path, (verdict, stamp) in zip(records, paths, pool.map(cache.check, paths)):
                if stamp is not None:
                    cache.put(path, stamp, verdict)
                _report_image(image, path, verdict, exif_transpose, problems)
        finally:
            cache.save()
    decoded = len(cache.new)
    cached = len(records) - decoded
    log.info("checked %d images: %d decoded, %d from %s", len(records), decoded, cached, cache.path)


def _require_strict_decoding() -> None:
    """Truncated images are only detected while PIL's LOAD_TRUNCATED_IMAGES is off; a library may
    have switched it on for the whole process."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; set it to False to detect truncation"
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _report_image(
    image: _Image, path: str, verdict: dict, exif_transpose: bool, problems: _Problems
) -> None:
    if verdict.get("missing"):
        problems.file("missing_file", f"{image.ref()}: file not found: {path}")
    elif "error" in verdict:
        kind = "truncated_image" if "truncated" in verdict["error"] else "bad_image"
        problems.file(kind, f"{image.ref()}: cannot decode {path}: {verdict['error']}")
    elif tuple(verdict["size"]) != (image.width, image.height):
        text = _size_mismatch_message(image, path, tuple(verdict["size"]), exif_transpose)
        problems.file("size_mismatch", text)


def _size_mismatch_message(
    image: _Image, path: str, decoded: tuple[int, int], exif_transpose: bool
) -> str:
    text = (
        f"{image.ref()}: declared size {image.width}x{image.height} (width x height) but the file "
        f"decodes to {decoded[0]}x{decoded[1]}"
    )
    orientation = _exif_orientation(path)
    if orientation in _SWAPPING_ORIENTATIONS and decoded[::-1] == (image.width, image.height):
        if exif_transpose:
            text += (
                f"; the file has EXIF orientation {orientation} and the declared size is that of "
                "the "
                "image as stored: load it without exif_transpose"
            )
        else:
            text += (
                f"; the file has EXIF orientation {orientation} and the declared size is that of "
                "the "
                "rotated image: load it with exif_transpose=True (--exif_transpose)"
            )
    return text


def _exif_orientation(path: str) -> int | None:
    try:
        with Image.open(path) as img:
            return img.getexif().get(_EXIF_ORIENTATION_TAG)
    except (OSError, ValueError, SyntaxError):
        return None


def _decode_verdict(path: str, exif_transpose: bool) -> dict:
    try:
        height, width = decode_image(path, exif_transpose).shape[:2]
    except Exception as e:  # any decoder failure is a verdict on the file, not a bug here
        return {"error": f"{type(e).__name__}: {e}"}
    return {"size": [width, height]}


class _CheckCache:
    """Image check verdicts, one record per absolute path:
    {"file_size": n, "mtime_ns": t, "<exif mode>": verdict}. A record whose size or mtime differs
    from the file's is stale and replaced."""

    def __init__(self, cache_dir: str, exif_transpose: bool):
        self.path = os.path.join(cache_dir, CACHE_FILE)
        self.exif_transpose = exif_transpose
        self.mode = "exif_transpose" if exif_transpose else "as_stored"
        self.entries = _read_cache(self.path)
        self.new: dict[str, dict] = {}

    def check(self, path: str) -> tuple[dict, dict | None]:
        """The verdict for one file and, when it was decoded now, the stamp to cache it under.
        Runs in worker threads: only reads `entries`."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return {"missing": True}, None
        except OSError as e:
            return {"error": f"cannot stat: {e}"}, None
        if not stat.S_ISREG(st.st_mode):
            return {"error": "not a regular file"}, None
        stamp = {"file_size": st.st_size, "mtime_ns": st.st_mtime_ns}
        record = self.entries.get(path)
        if record and _same_stamp(record, stamp) and self.mode in record:
            return record[self.mode], None
        return _decode_verdict(path, self.exif_transpose), stamp

    def put(self, path: str, stamp: dict, verdict: dict) -> None:
        self.new[path] = {**stamp, self.mode: verdict}

    def save(self) -> None:
        """Merges the new verdicts into the file on disk (another process may have written it
        meanwhile), drops records of files that no longer exist, and replaces it atomically."""
        if not self.new:
            return
        merged = _read_cache(self.path)
        for path, record in self.new.items():
            old = merged.get(path)
            merged[path] = {**old, **record} if old and _same_stamp(old, record) else record
        merged = {path: record for path, record in merged.items() if os.path.exists(path)}
        try:
            _write_json_atomic(self.path, {"version": _CACHE_VERSION, "entries": merged})
        except OSError as e:
            log.warning("could not write the image check cache %s: %s", self.path, e)


def _same_stamp(a: dict, b: dict) -> bool:
    return a.get("file_size") == b["file_size"] and a.get("mtime_ns") == b["mtime_ns"]


def _read_cache(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable image check cache %s: %s", path, e)
        return {}
    known = isinstance(data, dict) and data.get("version") == _CACHE_VERSION
    if not (known and isinstance(data.get("entries"), dict)):
        log.warning("ignoring image check cache %s: unknown format", path)
        return {}
    return data["entries"]


def _write_json_atomic(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".image_checks.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------- samples and stats


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
