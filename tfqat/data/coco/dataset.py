"""The public types of a loaded COCO dataset: `CocoDataset`, its `Sample`s, the `Problem`s found
in it and the `DatasetError` that lists the fatal ones."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

TASKS = ("detection", "pose")
ANNOTATION_PROBLEM_MODES = ("error", "warn")


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str
    fatal: bool


class DatasetError(ValueError):
    """Every fatal problem found in a dataset. str() is one line for one problem (the annotation
    file's path, then the problem); several are listed one per line, after their count."""

    def __init__(self, annotation_file: str, problems: list[Problem]):
        self.annotation_file = annotation_file
        self.problems = list(problems)
        if len(self.problems) == 1:
            # Messages start with the file's name; the whole path replaces it.
            text = self.problems[0].message
            name = f"{os.path.basename(annotation_file)}: "
            super().__init__(f"{annotation_file}: {text.removeprefix(name)}")
            return
        count = f"{len(self.problems)} problems"
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
