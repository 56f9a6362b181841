"""COCO reading and validation (tfqat.data.coco) and tools/inspect_dataset.py, on tiny fixtures
written with PIL into tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tfqat.data.coco import DatasetError, image_files, load_coco
from tfqat.data.images import decode_image, decoded_size

REPO = Path(__file__).resolve().parents[1]
ANN_FILE = "instances_val.json"
CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
]
KEYPOINT_NAMES = ["nose", "left_eye", "right_eye"]
POSE_CATEGORIES = [
    {"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 2], [1, 3]]}
]
COLORS = {
    "RGB": (200, 30, 40),
    "L": 128,
    "RGBA": (200, 30, 40, 128),
    "LA": (128, 200),
    "P": 7,
    "CMYK": (0, 200, 100, 0),
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFQAT_CACHE_DIR", str(tmp_path / "default_cache"))


# ---------------------------------------------------------------- fixture builders


def save_image(path, size=(32, 24), mode="RGB", orientation=None):
    """Writes an image of `size` (width, height); the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, COLORS[mode])
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif.tobytes())
    return path


def image_record(image_dir, image_id, file_name, size=(32, 24), declared=None, **save_kwargs):
    """Saves the image file and returns its COCO record (declared size defaults to the real one)."""
    save_image(Path(image_dir) / file_name, size, **save_kwargs)
    width, height = declared or size
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def ann(ann_id, image_id, category_id=1, bbox=(2, 3, 10, 8), **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "iscrowd": 0,
        "area": 80.0,
        **extra,
    }


def write_json(tmp_path, data, name=ANN_FILE):
    path = tmp_path / "annotations" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_dataset(tmp_path, images, annotations, categories=CATEGORIES, name=ANN_FILE):
    data = {"images": images, "annotations": annotations, "categories": categories}
    return write_json(tmp_path, data, name)


def load(tmp_path, ann_path, task="detection", **kwargs):
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return load_coco(ann_path, tmp_path / "images", task, **kwargs)


def problems_of(tmp_path, ann_path, task="detection", **kwargs):
    with pytest.raises(DatasetError) as info:
        load(tmp_path, ann_path, task, **kwargs)
    return info.value


def kps(*triples):
    return [float(v) for triple in triples for v in triple]


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "file_name, mode",
    [
        ("a.jpg", "RGB"),
        ("a.png", "RGB"),
        ("a.png", "L"),
        ("a.png", "RGBA"),
        ("a.png", "LA"),
        ("a.png", "P"),
        ("a.jpg", "L"),
        ("a.jpg", "CMYK"),
        ("sub/dir/a.JPG", "RGB"),
        ("b.PNG", "P"),
    ],
)
def test_decode_image_gives_rgb_uint8(tmp_path, file_name, mode):
    path = save_image(tmp_path / file_name, (32, 24), mode)
    image = decode_image(str(path))
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert image.flags.writeable
    assert decoded_size(str(path)) == (32, 24)


def test_loads_every_image_mode_and_subfolders(tmp_path):
    images_dir = tmp_path / "images"
    variants = [
        ("gray.png", "L"),
        ("rgba.png", "RGBA"),
        ("la.png", "LA"),
        ("palette.png", "P"),
        ("cmyk.jpg", "CMYK"),
        ("sub/dir/a.JPG", "RGB"),
    ]
    images = [
        image_record(images_dir, i, name, mode=mode) for i, (name, mode) in enumerate(variants, 1)
    ]
    dataset = load(tmp_path, write_dataset(tmp_path, images, [ann(1, 6)]))
    sample = dataset.samples[-1]
    assert sample.file_name == "sub/dir/a.JPG"
    assert sample.path == str(images_dir / "sub" / "dir" / "a.JPG") and os.path.isabs(sample.path)
    assert (sample.width, sample.height) == (32, 24)
    assert [s.image_id for s in dataset.samples] == [1, 2, 3, 4, 5, 6]
    assert dataset.image_dir == str(images_dir) and os.path.isabs(dataset.annotation_file)


def test_category_ids_with_gaps_map_to_sorted_contiguous_labels(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg")]
    anns = [ann(1, 1, 90), ann(2, 1, 1), ann(3, 1, 3)]
    dataset = load(tmp_path, write_dataset(tmp_path, images, anns))
    assert dataset.category_ids == [1, 3, 90]
    assert dataset.category_names == ["person", "car", "toothbrush"]
    sample = dataset.samples[0]
    assert sample.labels.tolist() == [2, 0, 1] and sample.labels.dtype == np.int32
    assert sample.ann_ids.tolist() == [1, 2, 3] and sample.ann_ids.dtype == np.int64
    assert dataset.stats["per_category"] == {1: 1, 3: 1, 90: 1}
    assert dataset.keypoint_names == [] and dataset.skeleton == []


def test_crowd_annotations_are_skipped_and_images_without_targets_kept(tmp_path):
    images_dir = tmp_path / "images"
    images = [image_record(images_dir, i, f"{i}.jpg") for i in (1, 2, 3)]
    polygon = ann(10, 1, iscrowd=1, segmentation=[[2, 3, 12, 3, 12, 11]])
    rle_string = ann(11, 1, iscrowd=1, segmentation={"size": [24, 32], "counts": "PPYo05N2M3"})
    rle_list = ann(
        12, 2, iscrowd=1, segmentation={"size": [24, 32], "counts": [60, 10, 14, 10, 674]}
    )
    anns = [polygon, rle_string, ann(13, 1), rle_list]
    dataset = load(tmp_path, write_dataset(tmp_path, images, anns))
    first, only_crowd, unannotated = dataset.samples
    assert first.ann_ids.tolist() == [13]
    for sample in (only_crowd, unannotated):
        assert sample.boxes.shape == (0, 4) and sample.boxes.dtype == np.float32
        assert sample.labels.shape == (0,) and sample.ann_ids.shape == (0,)
        assert sample.keypoints.shape == (0, 0, 3)
    stats = dataset.stats
    assert (stats["images"], stats["annotations"], stats["targets"]) == (3, 4, 1)
    assert (stats["crowd_skipped"], stats["empty_images"]) == (3, 2)


def test_detection_treats_keypoint_annotations_as_boxes(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg")]
    anns = [
        ann(1, 1, keypoints=kps((3, 4, 2), (5, 6, 1), (0, 0, 0)), num_keypoints=2),
        ann(2, 1, keypoints=kps((0, 0, 0), (0, 0, 0), (0, 0, 0)), num_keypoints=0),
    ]
    dataset = load(tmp_path, write_dataset(tmp_path, images, anns, categories=POSE_CATEGORIES))
    sample = dataset.samples[0]
    assert sample.ann_ids.tolist() == [1, 2]
    assert sample.keypoints.shape == (2, 0, 3)
    assert "no_keypoints" not in dataset.stats


def test_pose_reads_keypoints_and_keeps_annotations_without_any(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg")]
    anns = [
        ann(1, 1, keypoints=kps((3, 4, 2), (5.5, 6, 1), (0, 0, 0)), num_keypoints=2),
        ann(2, 1, keypoints=kps((0, 0, 0), (0, 0, 0), (0, 0, 0)), num_keypoints=0),
    ]
    dataset = load(
        tmp_path,
        write_dataset(
            tmp_path, images, anns, categories=POSE_CATEGORIES, name="person_keypoints_val.json"
        ),
        task="pose",
    )
    assert dataset.keypoint_names == KEYPOINT_NAMES and dataset.skeleton == [[1, 2], [1, 3]]
    sample = dataset.samples[0]
    assert sample.keypoints.dtype == np.float32 and sample.keypoints.shape == (2, 3, 3)
    np.testing.assert_array_equal(sample.keypoints[0], [[3, 4, 2], [5.5, 6, 1], [0, 0, 0]])
    assert dataset.stats["no_keypoints"] == 1 and dataset.stats["targets"] == 2


def test_boxes_are_clipped_and_tiny_boxes_kept(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg", size=(32, 24))]
    anns = [
        ann(1, 1, bbox=(-5, -4, 20, 10)),
        ann(2, 1, bbox=(10, 10, 0.8, 0.8)),
        ann(3, 1, bbox=(20, 12, 30, 30)),
        ann(4, 1, bbox=(0, 0, 32, 24)),
    ]
    dataset = load(tmp_path, write_dataset(tmp_path, images, anns))
    expected = [[0, 0, 15, 6], [10, 10, 10.8, 10.8], [20, 12, 32, 24], [0, 0, 32, 24]]
    np.testing.assert_allclose(dataset.samples[0].boxes, expected, rtol=1e-6)
    stats = dataset.stats
    assert (stats["clipped_boxes"], stats["tiny_boxes"]) == (2, 1)
    assert list(stats["box_sizes"].values()) == [1, 2, 1, 0, 0, 0, 0]
    assert list(stats["box_sizes"]) == [
        "<8",
        "8-16",
        "16-32",
        "32-64",
        "64-128",
        "128-256",
        ">=256",
    ]


# ---------------------------------------------------------------- EXIF orientation


@pytest.fixture
def rotated_jpeg(tmp_path):
    """A JPEG stored 40 wide x 20 high with EXIF orientation 6 (displayed 20 wide x 40 high)."""
    return save_image(tmp_path / "images" / "rot.jpg", (40, 20), orientation=6)


def test_exif_orientation_is_ignored_by_default(tmp_path, rotated_jpeg):
    assert decode_image(str(rotated_jpeg)).shape == (20, 40, 3)
    record = {"id": 1, "file_name": "rot.jpg", "width": 40, "height": 20}
    dataset = load(tmp_path, write_dataset(tmp_path, [record], [ann(1, 1)]))
    assert (dataset.samples[0].width, dataset.samples[0].height) == (40, 20)
    assert dataset.exif_transpose is False


def test_exif_transpose_applies_orientation(tmp_path, rotated_jpeg):
    assert decode_image(str(rotated_jpeg), exif_transpose=True).shape == (40, 20, 3)
    record = {"id": 1, "file_name": "rot.jpg", "width": 20, "height": 40}
    dataset = load(tmp_path, write_dataset(tmp_path, [record], [ann(1, 1)]), exif_transpose=True)
    assert (dataset.samples[0].width, dataset.samples[0].height) == (20, 40)
    assert dataset.exif_transpose is True


@pytest.mark.parametrize(
    "exif_transpose, declared, hint",
    [
        (False, (20, 40), "load it with exif_transpose=True"),
        (True, (40, 20), "load it without exif_transpose"),
    ],
)
def test_size_mismatch_from_exif_orientation_gives_a_hint(
    tmp_path, rotated_jpeg, exif_transpose, declared, hint
):
    record = {"id": 7, "file_name": "rot.jpg", "width": declared[0], "height": declared[1]}
    error = problems_of(
        tmp_path, write_dataset(tmp_path, [record], []), exif_transpose=exif_transpose
    )
    (problem,) = error.problems
    assert problem.kind == "size_mismatch" and problem.fatal
    decoded = "x".join(map(str, declared[::-1]))
    assert f"image 7 'rot.jpg': declared size {declared[0]}x{declared[1]}" in problem.message
    assert f"decodes to {decoded}" in problem.message
    assert "EXIF orientation 6" in problem.message and hint in problem.message


def test_size_mismatch_without_orientation_has_no_hint(tmp_path):
    images = [image_record(tmp_path / "images", 3, "a.png", size=(32, 24), declared=(24, 32))]
    (problem,) = problems_of(tmp_path, write_dataset(tmp_path, images, [])).problems
    assert problem.kind == "size_mismatch" and "EXIF" not in problem.message


# ---------------------------------------------------------------- validation: file level


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "annotations" / ANN_FILE
    path.parent.mkdir()
    path.write_text('{"images": [],\n  "annotations": [1,,2]}')
    (problem,) = problems_of(tmp_path, path).problems
    assert problem.kind == "bad_json"
    assert f"{ANN_FILE}: malformed JSON at line 2 column" in problem.message


def test_missing_annotation_file(tmp_path):
    error = problems_of(tmp_path, tmp_path / "nope.json")
    assert "annotation file not found" in str(error) and "nope.json" in str(error)


def test_top_level_must_be_an_object_with_the_three_lists(tmp_path):
    (problem,) = problems_of(tmp_path, write_json(tmp_path, [1, 2])).problems
    assert "top level must be a JSON object, got a list" in problem.message
    error = problems_of(tmp_path, write_json(tmp_path, {"images": [], "annotations": {}}))
    messages = [p.message for p in error.problems]
    assert messages == [
        f"{ANN_FILE}: 'annotations' must be a list, got an object",
        f"{ANN_FILE}: missing top-level key 'categories'",
    ]


def test_every_problem_is_collected_and_listed(tmp_path):
    images_dir = tmp_path / "images"
    good = image_record(images_dir, 1, "sub/a.jpg")
    images = [
        good,
        {"id": 2, "file_name": "b.jpg", "height": 24},  # no width
        image_record(images_dir, 3, "c.jpg"),
        image_record(images_dir, 3, "c2.jpg"),  # duplicate id
        {"id": 4, "file_name": "missing.jpg", "width": 32, "height": 24},
        {"id": 5, "file_name": "garbage.jpg", "width": 32, "height": 24},
        image_record(images_dir, 6, "small.png", size=(16, 16), declared=(32, 24)),
    ]
    (images_dir / "garbage.jpg").write_bytes(b"this is not an image")
    anns = [
        ann(17, 1, bbox=(2, 3, 0, 8)),
        ann(18, 1, bbox=(2, 3, 5, -1)),
        ann(19, 1, bbox=(float("nan"), 3, float("inf"), 8)),
        ann(20, 1, bbox=(2, 3, 5)),
        ann(21, 99),
        ann(22, 1, category_id=7),
        ann(21, 1),  # duplicate annotation id
        {"id": 23, "image_id": 1, "category_id": 1},  # no bbox
        ann(24, 1, bbox=(40, 30, 5, 5)),  # entirely outside the image
        ann(25, 2),  # image record is broken: already reported, nothing more
        ann(26, [1]),
        ann(27, 1, category_id="1"),
    ]
    categories = CATEGORIES + [{"id": 3, "name": "car again"}]
    error = problems_of(tmp_path, write_dataset(tmp_path, images, anns, categories=categories))
    messages = [p.message for p in error.problems]
    expected = [
        "duplicate category id 3",
        "image 2 'b.jpg': missing key(s) 'width'",
        "duplicate image id 3",
        "duplicate annotation id 21",
        "annotation 17 (image 1 'sub/a.jpg'): bbox width is 0",
        "annotation 18 (image 1 'sub/a.jpg'): bbox height is -1",
        "annotation 19 (image 1 'sub/a.jpg'): bbox x is nan",
        "annotation 19 (image 1 'sub/a.jpg'): bbox width is inf",
        "annotation 20 (image 1 'sub/a.jpg'): bbox is not 4 numbers: [2, 3, 5]",
        "annotation 21: unknown image id 99",
        "annotation 22 (image 1 'sub/a.jpg'): unknown category id 7",
        "annotation 23: missing key(s) 'bbox'",
        "annotation 24 (image 1 'sub/a.jpg'): bbox [40, 30, 5, 5] lies outside the 32x24 image",
        "annotation 26: unknown image id [1]",
        "annotation 27 (image 1 'sub/a.jpg'): unknown category id '1'",
        "image 4 'missing.jpg': file not found: " + str(images_dir / "missing.jpg"),
        "image 5 'garbage.jpg': cannot decode " + str(images_dir / "garbage.jpg"),
        "image 6 'small.png': declared size 32x24 (width x height) but the file decodes to 16x16",
    ]
    assert len(messages) == len(expected)
    for message, start in zip(messages, expected):
        assert message.startswith(f"{ANN_FILE}: {start}"), (message, start)
    assert all(p.fatal for p in error.problems)
    header, *lines = str(error).splitlines()
    assert header == f"{len(expected)} problems in dataset {tmp_path / 'annotations' / ANN_FILE}:"
    assert lines == messages


@pytest.fixture
def truncated_jpeg(tmp_path):
    path = tmp_path / "images" / "truncated.jpg"
    path.parent.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:
        image.verify()  # the header is intact: only a full decode notices
    return path


def test_truncated_image_is_detected_even_if_pil_was_told_to_accept_it(
    tmp_path, truncated_jpeg, monkeypatch
):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    record = {"id": 8, "file_name": "truncated.jpg", "width": 64, "height": 64}
    (problem,) = problems_of(tmp_path, write_dataset(tmp_path, [record], [])).problems
    assert problem.kind == "truncated_image"
    assert (
        "image 8 'truncated.jpg': cannot decode" in problem.message
        and "truncated" in problem.message
    )
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_folder_not_found(tmp_path):
    record = {"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}
    (problem,) = problems_of(tmp_path, write_dataset(tmp_path, [record], [])).problems
    assert "image folder not found" in problem.message


def test_check_images_false_trusts_declared_sizes(tmp_path):
    (tmp_path / "images").mkdir()
    record = {"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}
    dataset = load(tmp_path, write_dataset(tmp_path, [record], [ann(1, 1)]), check_images=False)
    assert (dataset.samples[0].width, dataset.samples[0].height) == (32, 24)


# ---------------------------------------------------------------- validation: pose


def test_pose_keypoint_problems(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg")]
    anns = [
        ann(1, 1, keypoints=[1.0, 2.0, 2.0]),
        ann(2, 1, keypoints=kps((1, 2, 2), (float("nan"), 2, 2), (1, 2, 2))),
        ann(3, 1, keypoints=kps((1, 2, 2), (1, 2, 2), (1, 2, 3))),
        ann(4, 1),  # no keypoints
        ann(5, 1, keypoints=kps((1, 2, 2), (1, 2, 2), (1, 2, 2)), iscrowd=1),
    ]
    path = write_dataset(tmp_path, images, anns, categories=POSE_CATEGORIES)
    error = problems_of(tmp_path, path, task="pose")
    messages = [p.message for p in error.problems]
    kinds = ["bad_keypoints", "bad_keypoints", "bad_keypoints", "missing_key"]
    assert [p.kind for p in error.problems] == kinds
    expected = (
        "annotation 1 (image 1 'a.jpg'): keypoints has 3 values, expected 9 (3 x 3 keypoints)"
    )
    assert expected in messages[0]
    assert "keypoint 1 ('left_eye')" in messages[1] and "not finite" in messages[1]
    assert "keypoint 2 ('right_eye'): visibility 3.0" in messages[2]
    assert "annotation 4: missing key(s) 'keypoints'" in messages[3]


def test_pose_categories_need_keypoint_names(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg")]
    path = write_dataset(tmp_path, images, [], categories=[{"id": 1, "name": "person"}])
    (problem,) = problems_of(tmp_path, path, task="pose").problems
    assert problem.message == f"{ANN_FILE}: category 1 ('person'): missing key(s) 'keypoints'"


# ---------------------------------------------------------------- annotation_problems="warn"


def test_warn_downgrades_annotation_problems_and_drops_those_annotations(tmp_path):
    images = [image_record(tmp_path / "images", 1, "a.jpg")]
    anns = [ann(1, 1), ann(2, 1, bbox=(2, 3, 0, 8)), ann(3, 42), ann(4, 1, category_id=5)]
    dataset = load(tmp_path, write_dataset(tmp_path, images, anns), annotation_problems="warn")
    assert dataset.samples[0].ann_ids.tolist() == [1]
    assert [w.kind for w in dataset.warnings] == ["bad_box", "unknown_image", "unknown_category"]
    assert not any(w.fatal for w in dataset.warnings)
    assert dataset.stats["dropped_annotations"] == 3 and dataset.stats["targets"] == 1


def test_warn_keeps_file_level_problems_fatal(tmp_path):
    gone = {"id": 2, "file_name": "gone.jpg", "width": 3, "height": 3}
    images = [image_record(tmp_path / "images", 1, "a.jpg"), gone]
    anns = [ann(1, 1, bbox=(2, 3, 0, 8)), ann(1, 1)]
    error = problems_of(tmp_path, write_dataset(tmp_path, images, anns), annotation_problems="warn")
    assert [p.kind for p in error.problems] == ["duplicate_id", "missing_file"]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"task": "segmentation"}, "task must be one of detection, pose; got 'segmentation'"),
        (
            {"task": "detection", "annotation_problems": "ignore"},
            "annotation_problems must be one of error, warn; got 'ignore'",
        ),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        load_coco(tmp_path / "x.json", tmp_path, **kwargs)


# ---------------------------------------------------------------- image check cache


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []

    def counting_decode(path, exif_transpose=False):
        calls.append(path)
        return decoded_size(path, exif_transpose)

    monkeypatch.setattr(image_files, "decoded_size", counting_decode)
    return calls


def test_second_pass_uses_the_cache(tmp_path, count_decodes):
    images_dir = tmp_path / "images"
    images = [image_record(images_dir, 1, "a.jpg"), image_record(images_dir, 2, "b.png")]
    path = write_dataset(tmp_path, images, [ann(1, 1)])
    load(tmp_path, path)
    assert len(count_decodes) == 2
    cache = json.loads((tmp_path / "cache" / "image_checks.json").read_text())
    assert set(cache["entries"]) == {str(images_dir / "a.jpg"), str(images_dir / "b.png")}

    load(tmp_path, path)
    assert len(count_decodes) == 2

    load(tmp_path, path, exif_transpose=True)  # another decode mode: another verdict
    assert len(count_decodes) == 4

    save_image(images_dir / "b.png", (32, 24), mode="L")
    os.utime(images_dir / "b.png", ns=(1, 1))
    load(tmp_path, path)
    assert count_decodes[4:] == [str(images_dir / "b.png")]


def test_cached_failures_are_still_reported(tmp_path, count_decodes):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.jpg").write_bytes(b"junk")
    path = write_dataset(tmp_path, [{"id": 1, "file_name": "bad.jpg", "width": 3, "height": 3}], [])
    first = problems_of(tmp_path, path)
    second = problems_of(tmp_path, path)
    assert len(count_decodes) == 1
    assert first.problems == second.problems


def test_cache_defaults_to_tfqat_cache_dir_and_survives_corruption(tmp_path, count_decodes):
    cache_file = tmp_path / "default_cache" / "image_checks.json"
    cache_file.parent.mkdir()
    cache_file.write_text("{not json")
    path = write_dataset(tmp_path, [image_record(tmp_path / "images", 1, "a.jpg")], [])
    load_coco(path, tmp_path / "images", "detection")
    load_coco(path, tmp_path / "images", "detection")
    assert len(count_decodes) == 1
    assert json.loads(cache_file.read_text())["version"] == 1
    assert [p.name for p in cache_file.parent.iterdir()] == ["image_checks.json"]


# ---------------------------------------------------------------- no TensorFlow, and the tool


def run_python(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def test_coco_module_does_not_import_tensorflow():
    code = "import sys, tfqat.data.coco, tfqat.data.images; print('tensorflow' in sys.modules)"
    result = run_python("-c", code)
    assert result.stdout.strip() == "False", result.stderr


def run_tool(*flags):
    return run_python(str(REPO / "tools" / "inspect_dataset.py"), *flags)


def test_inspect_dataset_prints_a_summary_of_a_valid_dataset(tmp_path):
    images_dir = tmp_path / "images"
    images = [image_record(images_dir, 1, "a.jpg"), image_record(images_dir, 2, "b.jpg")]
    anns = [
        ann(1, 1),
        ann(2, 1, category_id=3, bbox=(0, 0, 30, 20)),
        ann(3, 1, iscrowd=1),
        ann(4, 1, bbox=(1, 1, 0, 1)),
    ]
    path = write_dataset(tmp_path, images, anns)
    result = run_tool(
        "--task=detection",
        f"--annotations={path}",
        f"--images={images_dir}",
        "--annotation_problems=warn",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "images       2 (1 without targets)" in out
    assert "2 targets, 1 crowd skipped, 1 dropped for problems" in out
    assert "  person      (id   1)  1" in out and "  car         (id   3)  1" in out
    assert "     8-16  1" in out and "    16-32  1" in out
    assert "problems skipped: 1" in out and "annotation 4 (image 1 'a.jpg'): bbox width is 0" in out


def test_inspect_dataset_names_every_problem_and_fails(tmp_path):
    images = [image_record(tmp_path / "images", 3, "sub/a.jpg")]
    path = write_dataset(
        tmp_path, images, [ann(17, 3, bbox=(1, 1, 0, 4)), ann(18, 3, category_id=12)]
    )
    result = run_tool(
        "--task=detection", f"--annotations={path}", f"--images={tmp_path / 'images'}"
    )
    assert result.returncode == 1
    assert "2 problems in dataset" in result.stderr
    assert f"{ANN_FILE}: annotation 17 (image 3 'sub/a.jpg'): bbox width is 0" in result.stderr
    assert (
        f"{ANN_FILE}: annotation 18 (image 3 'sub/a.jpg'): unknown category id 12" in result.stderr
    )


def test_inspect_dataset_show_requires_out(tmp_path):
    result = run_tool("--task=detection", "--annotations=x.json", "--images=.", "--show=2")
    assert result.returncode != 0 and "--show requires --out" in result.stderr
