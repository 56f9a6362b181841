"""The annotation file's JSON structure and its category and image records, every problem
collected in a `_Problems` rather than raised."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from tfqat.data.coco.dataset import Problem

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")
_REQUIRED_CATEGORY_KEYS = ("id", "name")


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
