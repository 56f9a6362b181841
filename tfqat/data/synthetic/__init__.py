"""Deterministic synthetic COCO datasets, the default data of the synthetic recipes: numpy + PIL
only. May import `tfqat.data.coco` and `tfqat.data.images`; never TensorFlow."""

from __future__ import annotations

import os

from tfqat.data.coco import TASKS
from tfqat.data.images import default_cache_dir
from tfqat.data.synthetic.canvas import DEFAULT_IMAGE_SIZE
from tfqat.data.synthetic.figures import KEYPOINT_NAMES, SKELETON
from tfqat.data.synthetic.shapes import DETECTION_CLASSES
from tfqat.data.synthetic.writer import _SPLITS, _check_task, _make_dataset, dataset_paths

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "DETECTION_CLASSES",
    "KEYPOINT_NAMES",
    "SKELETON",
    "TASKS",
    "dataset_paths",
    "ensure_synthetic",
    "make_detection",
    "make_pose",
]

DEFAULT_NUM_TRAIN = 1500
DEFAULT_NUM_VAL = 300


def make_detection(
    out_dir: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> dict:
    """Writes the synthetic detection set in COCO 2017 layout; returns `dataset_paths`."""
    return _make_dataset("detection", out_dir, num_train, num_val, seed, image_size)


def make_pose(
    out_dir: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> dict:
    """Writes the synthetic person-keypoints set in COCO 2017 layout; returns `dataset_paths`."""
    return _make_dataset("pose", out_dir, num_train, num_val, seed, image_size)


def ensure_synthetic(
    task: str,
    cache_dir: str | None = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> dict:
    """Generates the synthetic `task` dataset once into the cache and returns its paths.

    The cache is `cache_dir` (default $TFQAT_CACHE_DIR or ~/.cache/tfqat), subfolder
    synthetic/<task>-<num_train>-<num_val>-s<seed>-<image_size>; an existing one is reused.
    """
    _check_task(task)
    root = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    out_dir = os.path.join(root, "synthetic", f"{task}-{num_train}-{num_val}-s{seed}-{image_size}")
    paths = dataset_paths(task, out_dir)
    if not all(os.path.isfile(paths[f"{split}_annotations"]) for split in _SPLITS):
        make = make_detection if task == "detection" else make_pose
        try:
            make(out_dir, num_train=num_train, num_val=num_val, seed=seed, image_size=image_size)
        except FileExistsError:
            if not os.path.isfile(
                paths["val_annotations"]
            ):  # not a concurrent run that finished first
                raise
    return paths
