"""The synthetic default datasets: COCO validity, determinism, difficulty properties, the cache."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfqat.data import synthetic
from tfqat.data.synthetic import writer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"num_train": 8, "num_val": 4}


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory):
    return synthetic.make_detection(str(tmp_path_factory.mktemp("det") / "data"), **TINY)


@pytest.fixture(scope="module")
def pose_set(tmp_path_factory):
    return synthetic.make_pose(str(tmp_path_factory.mktemp("pose") / "data"), **TINY)


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _ap_of_ground_truth_as_predictions(annotation_file: str, iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        keys = ("image_id", "category_id", "bbox") + (
            ("keypoints",) if iou_type == "keypoints" else ()
        )
        predictions = [{**{k: a[k] for k in keys}, "score": 1.0} for a in gt.dataset["annotations"]]
        evaluator = COCOeval(gt, gt.loadRes(predictions), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0]


def _dataset_files(root: str) -> dict[str, bytes]:
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_layout_matches_coco_2017(detection_set, pose_set):
    for paths, prefix in ((detection_set, "instances"), (pose_set, "person_keypoints")):
        for split, num_images in (("train", TINY["num_train"]), ("val", TINY["num_val"])):
            assert paths[f"{split}_annotations"].endswith(f"annotations/{prefix}_{split}.json")
            assert paths[f"{split}_images"].endswith(f"images/{split}")
            assert os.path.isabs(paths[f"{split}_images"])
            coco = _load(paths[f"{split}_annotations"])
            assert sorted(os.listdir(paths[f"{split}_images"])) == sorted(
                i["file_name"] for i in coco["images"]
            )
            assert len(coco["images"]) == num_images
            assert [i["id"] for i in coco["images"]] == list(range(1, num_images + 1))
            assert [a["id"] for a in coco["annotations"]] == list(
                range(1, len(coco["annotations"]) + 1)
            )
    assert not [
        name
        for name in os.listdir(os.path.dirname(os.path.dirname(pose_set["val_images"])))
        if "partial" in name
    ]


@pytest.mark.parametrize("split", ["train", "val"])
def test_detection_ground_truth_scores_ap_1(detection_set, split):
    assert _ap_of_ground_truth_as_predictions(
        detection_set[f"{split}_annotations"], "bbox"
    ) == pytest.approx(1.0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_pose_ground_truth_scores_ap_1(pose_set, split):
    assert _ap_of_ground_truth_as_predictions(
        pose_set[f"{split}_annotations"], "keypoints"
    ) == pytest.approx(1.0)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synthetic.make_detection(str(tmp_path / name), num_train=3, num_val=2, seed=seed)
    a, b, c = (_dataset_files(str(tmp_path / name)) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_worker_processes_draw_the_same_bytes(tmp_path, monkeypatch):
    synthetic.make_detection(str(tmp_path / "in_process"), num_train=5, num_val=3)
    monkeypatch.setattr(writer, "_MIN_IMAGES_FOR_WORKERS", 0)
    synthetic.make_detection(str(tmp_path / "workers"), num_train=5, num_val=3)
    assert _dataset_files(str(tmp_path / "in_process")) == _dataset_files(str(tmp_path / "workers"))


def test_pose_is_deterministic(tmp_path):
    a = synthetic.make_pose(str(tmp_path / "a"), num_train=3, num_val=2)
    b = synthetic.make_pose(str(tmp_path / "b"), num_train=3, num_val=2)
    assert _dataset_files(str(tmp_path / "a")) == _dataset_files(str(tmp_path / "b"))
    assert _load(a["train_annotations"]) != _load(a["val_annotations"])  # different streams
    assert _load(b["val_annotations"])["annotations"]


def test_detection_classes_and_small_objects(tmp_path):
    paths = synthetic.make_detection(str(tmp_path / "data"), num_train=60, num_val=1)
    coco = _load(paths["train_annotations"])
    assert len(coco["categories"]) >= 6
    boxes = np.array([a["bbox"] for a in coco["annotations"]])
    # Small: the longer side of the box is under 32 image pixels.
    assert np.mean(boxes[:, 2:].max(axis=1) < 32) >= 0.3
    assert {a["category_id"] for a in coco["annotations"]} == {c["id"] for c in coco["categories"]}
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=61)[1:]
    assert 3 <= per_image.mean() <= 12
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= 256 + 1e-6)
    assert np.all(boxes[:, 2:] > 0)


def test_pose_annotations(pose_set):
    visibilities = set()
    for split in ("train", "val"):
        coco = _load(pose_set[f"{split}_annotations"])
        (category,) = coco["categories"]
        assert (
            category["keypoints"] == list(synthetic.KEYPOINT_NAMES)
            and len(category["keypoints"]) == 17
        )
        assert category["skeleton"] == synthetic.SKELETON
        for ann in coco["annotations"]:
            keypoints = np.array(ann["keypoints"]).reshape(17, 3)
            assert len(ann["keypoints"]) == 51
            assert ann["num_keypoints"] == np.count_nonzero(keypoints[:, 2])
            assert np.all(keypoints[keypoints[:, 2] == 0] == 0)
            assert ann["area"] > 0 and ann["iscrowd"] == 0
            visibilities |= set(keypoints[:, 2].astype(int).tolist())
    assert visibilities == {0, 1, 2}


def test_ensure_synthetic_reuses_the_cache(tmp_path, monkeypatch):
    paths = synthetic.ensure_synthetic(
        "pose", cache_dir=str(tmp_path), num_train=3, num_val=2, seed=5
    )
    assert paths["train_annotations"] == str(
        tmp_path / "synthetic" / "pose-3-2-s5-256" / "annotations" / "person_keypoints_train.json"
    )
    mtime = os.stat(paths["train_annotations"]).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "make_pose", fail)
    assert (
        synthetic.ensure_synthetic("pose", cache_dir=str(tmp_path), num_train=3, num_val=2, seed=5)
        == paths
    )
    assert os.stat(paths["train_annotations"]).st_mtime_ns == mtime


def test_ensure_synthetic_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TFQAT_CACHE_DIR", str(tmp_path))
    paths = synthetic.ensure_synthetic("detection", num_train=2, num_val=1)
    assert paths["val_images"] == str(
        tmp_path / "synthetic" / "detection-2-1-s0-256" / "images" / "val"
    )
    assert len(os.listdir(paths["val_images"])) == 1


def test_ensure_synthetic_rejects_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="detection, pose"):
        synthetic.ensure_synthetic("segmentation", cache_dir=str(tmp_path))
    assert not os.listdir(tmp_path)


def test_existing_output_is_not_overwritten(detection_set):
    root = os.path.dirname(os.path.dirname(detection_set["train_images"]))
    with pytest.raises(FileExistsError):
        synthetic.make_detection(root, num_train=1, num_val=1)


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(job):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(writer, "_render_split", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        synthetic.make_pose(str(tmp_path / "data"), num_train=1, num_val=1)
    assert os.listdir(tmp_path) == []


def test_library_does_not_import_tensorflow():
    code = "import sys, tfqat.data.synthetic; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tool_writes_a_dataset_and_rejects_bad_flags(tmp_path):
    tool = os.path.join(REPO_ROOT, "tools", "make_synthetic.py")
    out = tmp_path / "data"
    args = [
        sys.executable,
        tool,
        "--task=detection",
        f"--out={out}",
        "--num_train=2",
        "--num_val=1",
    ]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "train 2 images" in result.stdout
    assert (out / "annotations" / "instances_val.json").is_file()
    bad = subprocess.run(
        [sys.executable, tool, "--task=segmentation", f"--out={tmp_path / 'x'}"],
        capture_output=True,
    )
    assert bad.returncode != 0
    again = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT)
    assert again.returncode != 0 and "already exists" in again.stderr
