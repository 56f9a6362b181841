"""COCO instances / person_keypoints reading and validation (`load_coco`), numpy + PIL only.
May import `tfqat.data.images` and `tfqat.fileio`; never TensorFlow nor other tfqat packages."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tfqat.data.coco.annotations import _AnnotationCounts, _parse_annotations
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
    _Categories,
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
    "load_coco_splits",
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
    num_workers: int | None = None,
) -> CocoDataset:
    """Reads and validates a COCO instances (detection) or person_keypoints (pose) dataset.

    One pass over the annotation file and every image, before any training starts, collects every
    problem, so a user fixes a dataset in one round instead of one crash per epoch. Each image is
    decoded fully once; the verdict is cached per file (path, size, mtime, EXIF mode) so later
    passes over a large dataset are quick.

    Raises DatasetError with every fatal problem. Per-annotation problems (bad box or keypoints,
    unknown image or category) are fatal unless `annotation_problems="warn"`, which drops those
    annotations and records them in `warnings`. `check_images=False` trusts the declared sizes and
    skips every image-file check. Images are decoded by `num_workers` threads, by default one per
    CPU this process may run on.
    """
    num_workers = _check_options(task, annotation_problems, num_workers)
    parsed = _read_annotations(annotation_file, image_dir, task, annotation_problems)
    if check_images:
        _check_parsed_images(parsed, exif_transpose, cache_dir, num_workers)
    return _dataset(parsed, exif_transpose)


def load_coco_splits(
    splits: list[tuple[str, str]],
    task: str,
    *,
    exif_transpose: bool = False,
    annotation_problems: str = "error",
    cache_dir: str | None = None,
    num_workers: int | None = None,
) -> list[CocoDataset]:
    """`load_coco` of several (annotation file, image folder) splits, e.g. train and val, with
    every annotation file read and validated before any image is decoded: a broken val file
    stops a run before the (much larger) train set's images are checked. Raises DatasetError with
    the problems of the first split that has any."""
    num_workers = _check_options(task, annotation_problems, num_workers)
    parsed = [_read_annotations(a, i, task, annotation_problems) for a, i in splits]
    for split in parsed:
        _raise_if_fatal(split)
    for split in parsed:
        _check_parsed_images(split, exif_transpose, cache_dir, num_workers)
    return [_dataset(split, exif_transpose) for split in parsed]


@dataclass
class _Parsed:
    """One annotation file, read and checked; its image files not yet."""

    annotation_file: str
    image_dir: str
    task: str
    problems: _Problems
    categories: _Categories
    images: dict
    targets: dict
    counts: _AnnotationCounts
    num_annotations: int


def _read_annotations(annotation_file, image_dir, task, annotation_problems) -> _Parsed:
    """Reads and checks one annotation file; raises DatasetError if its structure is unusable."""
    annotation_file = os.path.abspath(annotation_file)
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
    return _Parsed(
        annotation_file,
        os.path.abspath(image_dir),
        task,
        problems,
        categories,
        images,
        targets,
        counts,
        len(raw_annotations),
    )


def _check_parsed_images(parsed: _Parsed, exif_transpose, cache_dir, num_workers) -> None:
    _check_image_files(
        parsed.images, parsed.image_dir, exif_transpose, cache_dir, num_workers, parsed.problems
    )
    _raise_if_fatal(parsed)


def _raise_if_fatal(parsed: _Parsed) -> None:
    if parsed.problems.fatal():
        raise DatasetError(parsed.annotation_file, parsed.problems.fatal())


def _dataset(parsed: _Parsed, exif_transpose: bool) -> CocoDataset:
    _raise_if_fatal(parsed)
    categories = parsed.categories
    samples = [
        _make_sample(image, parsed.image_dir, parsed.targets.get(image.id, []), categories)
        for image in parsed.images.values()
    ]
    return CocoDataset(
        task=parsed.task,
        annotation_file=parsed.annotation_file,
        image_dir=parsed.image_dir,
        samples=samples,
        category_ids=categories.ids,
        category_names=categories.names,
        keypoint_names=categories.keypoint_names,
        skeleton=categories.skeleton,
        warnings=parsed.problems.warnings(),
        stats=_stats(samples, categories, parsed.num_annotations, parsed.counts),
        exif_transpose=exif_transpose,
    )


def _check_options(task: str, annotation_problems: str, num_workers: int | None) -> int:
    """Raises ValueError on a bad option; returns the number of image-check threads."""
    _check_choice("task", task, TASKS)
    _check_choice("annotation_problems", annotation_problems, ANNOTATION_PROBLEM_MODES)
    if num_workers is None:
        return len(os.sched_getaffinity(0))
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1; got {num_workers}")
    return num_workers


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
