"""Dataset writing in COCO 2017 layout. Image i of a split comes from its own generator seeded
with (seed, split, i), so the output is the same byte for byte however the work is shared among
worker processes, and train and val are different streams. A dataset is built in a temporary
sibling folder and renamed into place, so an interrupted run never leaves half a dataset."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable

import numpy as np
from PIL import Image

from tfqat.data.coco import TASKS
from tfqat.data.synthetic.figures import KEYPOINT_NAMES, SKELETON, _pose_scene
from tfqat.data.synthetic.shapes import DETECTION_CLASSES, _detection_scene

_ANNOTATION_PREFIX = {"detection": "instances", "pose": "person_keypoints"}
_SPLITS = ("train", "val")
_JPEG_QUALITY = 90
_WORKERS = 2
_MIN_IMAGES_FOR_WORKERS = 100  # below this, starting worker processes costs more than it saves


def dataset_paths(task: str, root: str) -> dict:
    """The absolute annotation / image paths of a dataset in COCO 2017 layout under `root`."""
    _check_task(task)
    root = os.path.abspath(root)
    paths = {}
    for split in _SPLITS:
        paths[f"{split}_annotations"] = os.path.join(
            root, "annotations", f"{_ANNOTATION_PREFIX[task]}_{split}.json"
        )
        paths[f"{split}_images"] = os.path.join(root, "images", split)
    return paths


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; valid choices: {', '.join(TASKS)}")


def _make_dataset(
    task: str, out_dir: str, num_train: int, num_val: int, seed: int, image_size: int
) -> dict:
    _check_task(task)
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    out_dir = os.path.abspath(out_dir)

    def build(root: str) -> None:
        os.makedirs(os.path.join(root, "annotations"))
        paths = dataset_paths(task, root)
        for split_index, (split, num_images) in enumerate(zip(_SPLITS, (num_train, num_val))):
            job = {
                "task": task,
                "image_dir": paths[f"{split}_images"],
                "stream": [seed, split_index],
                "image_size": image_size,
                "num_images": num_images,
            }
            os.makedirs(job["image_dir"])
            objects = _render_split(job)
            with open(paths[f"{split}_annotations"], "w") as f:
                json.dump(_coco_dict(task, objects, image_size), f, separators=(",", ":"))

    _build_atomically(out_dir, build)
    return dataset_paths(task, out_dir)


def _build_atomically(out_dir: str, build: Callable[[str], None]) -> None:
    """Runs `build` on a temporary sibling folder, then renames it to `out_dir`.

    Raises FileExistsError when `out_dir` exists and is not empty, before or after the build
    (a concurrent run may have finished first).
    """
    if os.path.lexists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise FileExistsError(f"{out_dir} already exists and is not an empty folder")
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        build(tmp)
        try:
            os.replace(tmp, out_dir)  # replaces an empty folder, fails on a non-empty one
        except OSError as e:
            raise FileExistsError(f"{out_dir} appeared while it was being generated") from e
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _render_split(job: dict) -> list[list[dict]]:
    """Draws and saves the images of one split; returns the annotations of each image.

    Large splits are shared among worker processes started with `python -c`: forking a process
    that runs TensorFlow's threads is unsafe, and multiprocessing's spawn and forkserver would
    re-run the caller's main module in every worker.
    """
    num_images = job["num_images"]
    if num_images < _MIN_IMAGES_FOR_WORKERS:
        return [_render_image(job, index) for index in range(num_images)]
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(_WORKERS)]
        workers = []
        stack.callback(_stop, workers)
        command = [sys.executable, "-c", _WORKER_COMMAND, json.dumps(job), str(_WORKERS)]
        for worker, output in enumerate(outputs):
            process = subprocess.Popen(
                [*command, str(worker)], stdout=output, env=_worker_environment()
            )
            workers.append(process)
        for worker in workers:
            if worker.wait() != 0:
                raise RuntimeError(
                    f"a synthetic-data worker failed with exit code {worker.returncode}"
                )
        per_worker = []
        for output in outputs:
            output.seek(0)
            per_worker.append(json.load(output))
    return [per_worker[index % _WORKERS][index // _WORKERS] for index in range(num_images)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


_WORKER_COMMAND = (
    "import sys; from tfqat.data.synthetic.writer import _run_worker; _run_worker(*sys.argv[1:])"
)


def _worker_environment() -> dict:
    """The environment of a worker: this one, with this copy of tfqat importable first."""
    here = os.path.dirname(os.path.abspath(__file__))  # <package_root>/tfqat/data/synthetic
    package_root = os.path.abspath(os.path.join(here, os.pardir, os.pardir, os.pardir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _run_worker(job_json: str, num_workers: str, worker: str) -> None:
    """Worker process: renders images worker, worker + num_workers, ... of a job; prints their
    annotations as one JSON list."""
    job = json.loads(job_json)
    indices = range(int(worker), job["num_images"], int(num_workers))
    json.dump([_render_image(job, index) for index in indices], sys.stdout, separators=(",", ":"))


def _render_image(job: dict, index: int) -> list[dict]:
    """Draws and saves image `index` of a split; returns its annotations (without ids)."""
    rng = np.random.default_rng([*job["stream"], index])
    render = _detection_scene if job["task"] == "detection" else _pose_scene
    image, objects = render(rng, job["image_size"])
    path = os.path.join(job["image_dir"], _file_name(index))
    Image.fromarray(image).save(path, "JPEG", quality=_JPEG_QUALITY)
    return objects


def _file_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _coco_dict(task: str, objects_per_image: list[list[dict]], image_size: int) -> dict:
    images, annotations = [], []
    for index, objects in enumerate(objects_per_image):
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": _file_name(index),
                "width": image_size,
                "height": image_size,
                "license": 1,
            }
        )
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    **obj,
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
    return {
        "info": {
            "description": f"tfqat synthetic {task} dataset",
            "version": "1.0",
            "year": 2025,
            "contributor": "tfqat.data.synthetic",
            "date_created": "2025-01-01",
        },
        "licenses": [
            {
                "id": 1,
                "name": "CC0 1.0",
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": _categories(task),
    }


def _categories(task: str) -> list[dict]:
    if task == "detection":
        return [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(DETECTION_CLASSES)
        ]
    return [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": SKELETON,
        }
    ]
