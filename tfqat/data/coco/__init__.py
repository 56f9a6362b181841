"""COCO instances / person_keypoints reading and validation (`load_coco`), numpy + PIL only.
May import `tfqat.data.images` and `tfqat.fileio`; never TensorFlow nor other tfqat packages."""

from __future__ import annotations

import os

from tfqat.data.coco.annotations import _parse_annotations
from tfqat.data.coco.dataset import (
    ANNOTATION_PROBLEM_MODES,
    TASKS,
    CocoDataset,
    DatasetError,
    Problem,
    Sample,
)
from tfqat.data.coco.image_files import CACHE_FILE, _check_image_files
from tfqat.data.coco.records import (
    _parse_categories,
    _parse_images,
    _Problems,
    _read_json,
    _top_level_sections,
)
from tfqat.data.coco.stats import BOX_SIZE_EDGES, BOX_SIZE_LABELS, _make_sample, _stats

__all__ = [
    "ANNOTATION_PROBLEM_MODES",
    "BOX_SIZE_EDGES",
    "BOX_SIZE_LABELS",
    "CACHE_FILE",
    "TASKS",
    "CocoDataset",
    "DatasetError",
    "Problem",
    "Sample",
    "load_coco",
]


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

    One pass over the annotation file and every image, before any training starts, collects every
    problem, so a user fixes a dataset in one round instead of one crash per epoch. Each image is
    decoded fully once; the verdict is cached per file (path, size, mtime, EXIF mode) so later
    passes over a large dataset are quick.

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
