"""Deterministic synthetic COCO datasets: the default data of the synthetic recipes.

numpy + PIL only (no TensorFlow). Two tasks:

- detection: 7 shape classes that differ in form (colour is random per object), sizes log-uniform
  over 8-120 px at 256 px, rotated, overlapping, on textured backgrounds with non-class clutter;
- pose: articulated figures with the 17 COCO keypoints, 1-4 per image, front / back / profile
  views. A figure's left limbs and ear are always warm (red-orange), its right ones always cool
  (blue), so left and right stay learnable in every view.

Every image is drawn at twice its size and box-downsampled, which anti-aliases the edges. Image i
of a split comes from its own generator seeded with (seed, split, i), so the output is the same
byte for byte however the work is shared among processes, and train and val are different
streams. A dataset is built in a temporary sibling folder and renamed into place, so an
interrupted run never leaves half a dataset. Sizes scale with `image_size` (above: for 256).
"""

from __future__ import annotations

import colorsys
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageStat

from tfqat.data.coco import TASKS, default_cache_dir

DEFAULT_NUM_TRAIN = 1500
DEFAULT_NUM_VAL = 300
DEFAULT_IMAGE_SIZE = 256

DETECTION_CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring")
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip

_ANNOTATION_PREFIX = {"detection": "instances", "pose": "person_keypoints"}
_SPLITS = ("train", "val")
_JPEG_QUALITY = 90
_WORKERS = 2
_MIN_IMAGES_FOR_WORKERS = 100  # below this, starting worker processes costs more than it saves
_SS = 2  # supersampling factor of the drawing canvas

# Detection scene.
_OBJECT_SIZE_RANGE = (8.0, 120.0)  # unrotated extent in px at 256, log-uniform
_OBJECTS_PER_IMAGE = (3, 12)
_EMPTY_IMAGE_FRACTION = 0.04
_MIN_VISIBLE = 0.5  # a new object may not leave an earlier one less visible than this
_MIN_VISIBLE_LABELED = 0.4  # objects more occluded than this (by top clutter) are not annotated
_MIN_INSIDE = 0.6  # fraction of an object's area that must lie inside the image
_PLACEMENT_TRIES = 12

# Pose scene.
_PERSON_HEIGHT_RANGE = (60.0, 220.0)  # px at 256, log-uniform
_PERSONS_PER_IMAGE = (1, 4)
_MAX_PERSON_IOU = 0.3
_MIN_KEYPOINTS_INSIDE = 11
_KEYPOINT_DROP_RATE = 0.04  # labeled keypoints randomly left unlabeled (v=0)
_OCCLUDER_PROBABILITY = 0.4
_LEFT_HUES = (0.0, 0.1)  # red to orange
_RIGHT_HUES = (0.53, 0.7)  # cyan to blue
_TORSO_HUES = ((0.22, 0.45), (0.75, 0.92))  # greens, purples

NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = range(5)
TORSO, HEAD, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG = range(6)
_PARTS_PER_PERSON = 6
# Body parts a keypoint belongs to: it is visible (v=2) when one of them is drawn on top of it.
_KEYPOINT_PARTS = (
    (HEAD,), (HEAD,), (HEAD,), (HEAD,), (HEAD,), (TORSO, LEFT_ARM), (TORSO, RIGHT_ARM),
    (LEFT_ARM,), (RIGHT_ARM,), (LEFT_ARM,), (RIGHT_ARM,), (TORSO, LEFT_LEG), (TORSO, RIGHT_LEG),
    (LEFT_LEG,), (RIGHT_LEG,), (LEFT_LEG,), (RIGHT_LEG,),
)  # fmt: skip


# === Public API ===


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


# === Dataset writing ===


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
    "import sys; from tfqat.data.synthetic import _run_worker; _run_worker(*sys.argv[1:])"
)


def _worker_environment() -> dict:
    """The environment of a worker: this one, with this copy of tfqat importable first."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def _round(values) -> list[float]:
    return [round(float(v), 2) for v in values]


# === Drawing ===


@dataclass
class _Mask:
    """A binary mask on the 2x canvas, placed with its top-left pixel at (x0, y0)."""

    image: Image.Image  # mode L, 0 or 255
    pixels: np.ndarray  # the same as bool (h, w)
    x0: int
    y0: int

    def on_canvas(self, canvas_size: int) -> tuple[tuple[slice, slice], np.ndarray]:
        """The canvas slices this mask covers and the part of `pixels` inside the canvas."""
        h, w = self.pixels.shape
        cx0, cy0 = max(self.x0, 0), max(self.y0, 0)
        cx1, cy1 = min(self.x0 + w, canvas_size), min(self.y0 + h, canvas_size)
        if cx1 <= cx0 or cy1 <= cy0:
            return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
        local = self.pixels[cy0 - self.y0 : cy1 - self.y0, cx0 - self.x0 : cx1 - self.x0]
        return (slice(cy0, cy1), slice(cx0, cx1)), local


def _polygons_mask(polygons: list[tuple[np.ndarray, int]]) -> _Mask:
    """Rasterizes (vertices in 1x image coordinates, fill 1 or 0) polygons, in order, at 2x."""
    # A vertex at continuous 1x position p lies at 2p - 0.5 in PIL's pixel-centre coordinates.
    scaled = [(_SS * np.asarray(p, np.float64) - 0.5, fill) for p, fill in polygons]
    points = np.concatenate([p for p, _ in scaled])
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 2
    image = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(image)
    for p, fill in scaled:
        draw.polygon((p - (x0, y0)).ravel().tolist(), fill=255 * fill)
    return _Mask(image, np.asarray(image) > 0, int(x0), int(y0))


class _Canvas:
    """A 2x-supersampled RGB image plus, per 2x pixel, the id of what was drawn there last.

    Owner ids: 0 background or clutter, -1 occluders, >= 1 annotated things.
    """

    def __init__(self, background: Image.Image):
        self.size = _SS * background.width
        # Nearest-neighbour upsampling: where nothing is drawn, downsampling restores the
        # background.
        self.image = background.resize((self.size, self.size), Image.Resampling.NEAREST)
        self.owner = np.zeros((self.size, self.size), np.int32)

    def owners_under(self, mask: _Mask) -> np.ndarray:
        region, local = mask.on_canvas(self.size)
        return self.owner[region][local]

    def paint(self, mask: _Mask, colour, owner: int) -> None:
        """Paints `colour` (an RGB triple or an (h, w, 3) uint8 patch the size of the mask) under
        the mask."""
        fill = Image.fromarray(colour) if isinstance(colour, np.ndarray) else colour
        self.image.paste(fill, (mask.x0, mask.y0), mask.image)
        region, local = mask.on_canvas(self.size)
        self.owner[region][local] = owner

    def mean_colour(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Mean RGB inside a 1x box (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = (int(round(min(max(_SS * v, 0), self.size))) for v in box)
        if x1 <= x0 or y1 <= y0:
            return np.full(3, 128.0)
        return np.array(ImageStat.Stat(self.image.crop((x0, y0, x1, y1))).mean)

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        """Downsamples to 1x and adds sensor-like noise; returns the uint8 image."""
        image = np.asarray(self.image.reduce(_SS)).astype(np.int16)
        noise = np.round(_gaussian_quantiles() * rng.uniform(1.5, 8.0)).astype(np.int16)
        image += noise[rng.integers(0, 256, image.shape, dtype=np.uint8)]
        return np.clip(image, 0, 255).astype(np.uint8)


@functools.cache
def _gaussian_quantiles() -> np.ndarray:
    """256 equally likely standard-normal values: indexing them with random bytes is a much
    faster Gaussian noise than drawing normals."""
    return np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


@functools.cache
def _unit_arc(start: float, stop: float, n: int) -> np.ndarray:
    """n points of the unit circle from angle `start` to `stop` (excluded when a full turn)."""
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * np.pi)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse(centre, rx: float, ry: float, angle: float = 0.0, n: int = 32) -> np.ndarray:
    return _rotate(_unit_arc(0.0, 2 * np.pi, n) * (rx, ry), angle) + centre


def _capsule(p0, p1, radius: float, n: int = 8) -> np.ndarray:
    """Outline of a thick segment with round ends (a stadium)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    d = p1 - p0
    angle = np.arctan2(d[1], d[0]) if np.hypot(*d) > 1e-9 else 0.0
    cap = _rotate(_unit_arc(-np.pi / 2, np.pi / 2, n) * radius, angle)
    return np.concatenate([p1 + cap, p0 - cap])


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _contrasting_colour(
    rng: np.random.Generator, reference: np.ndarray, min_distance: float = 70.0
):
    """A random colour at least `min_distance` (RGB) from `reference`, so objects stay visible."""
    colour = _random_colour(rng)
    for _ in range(20):
        if np.linalg.norm(np.subtract(colour, reference)) >= min_distance:
            break
        colour = _random_colour(rng)
    return colour


def _shaded_patch(rng: np.random.Generator, colour, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 patch of `colour` with a random linear shading gradient across it."""
    h, w = shape
    shade = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, 45)
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float32) @ shade
    corners = np.clip(np.asarray(colour, np.float32) + corners[:, None], 0, 255).astype(np.uint8)
    # Bilinear upsampling of the 2x2 corner colours is a linear ramp.
    ramp = Image.fromarray(corners.reshape(2, 2, 3)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(ramp)


# === Backgrounds and clutter (shared by both tasks) ===


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random gradient with smooth colour variation, sometimes stripes, and blurred blobs."""
    grid = int(rng.integers(2, 7))
    cells = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    direction = _unit(rng.uniform(0, 2 * np.pi))
    ramp = cells[None, :] * direction[0] + cells[:, None] * direction[1]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    variation = rng.uniform(-60, 60, (grid, grid, 3)) * rng.uniform(0.3, 1.0)
    low = np.clip(c0 + (c1 - c0) * ramp[..., None] + variation, 0, 255).astype(np.uint8)
    image = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.35:
        image = _add_stripes(rng, image)
    _paste_blobs(rng, image)
    return image


def _add_stripes(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    size = image.width
    direction = _unit(rng.uniform(0, np.pi))
    period = rng.uniform(4, 40)
    coords = np.arange(size, dtype=np.float32) * (2 * np.pi / period)
    a, b = coords * direction[0] + rng.uniform(0, 2 * np.pi), coords * direction[1]
    # sin(a + b) from 1-D sines and cosines: much cheaper than a sine per pixel.
    wave = np.sin(a)[None, :] * np.cos(b)[:, None] + np.cos(a)[None, :] * np.sin(b)[:, None]
    tint = rng.uniform(-1, 1, 3).astype(np.float32) * rng.uniform(8, 35)
    striped = np.asarray(image, np.float32) + wave[..., None] * tint
    return Image.fromarray(np.clip(striped, 0, 255).astype(np.uint8))


def _paste_blobs(rng: np.random.Generator, image: Image.Image) -> None:
    """Blends a few heavily blurred coloured ellipses into the image."""
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0, image.width, 2)
        rx, ry = rng.uniform(0.05, 0.3, 2) * image.width
        blur = float(rng.uniform(3, 12))
        margin = int(3 * blur) + 1
        x0, y0 = int(cx - rx) - margin, int(cy - ry) - margin
        alpha = Image.new("L", (int(2 * rx) + 2 * margin + 1, int(2 * ry) + 2 * margin + 1), 0)
        ellipse = (cx - rx - x0, cy - ry - y0, cx + rx - x0, cy + ry - y0)
        ImageDraw.Draw(alpha).ellipse(ellipse, fill=int(rng.integers(80, 220)))
        image.paste(
            _random_colour(rng),
            (x0, y0, x0 + alpha.width, y0 + alpha.height),
            alpha.filter(ImageFilter.BoxBlur(blur)),
        )


def _draw_clutter(
    canvas: _Canvas, rng: np.random.Generator, count: int, scale: float, owner: int = 0
) -> None:
    """Non-class distractors: lines, arcs, irregular blobs and handwriting-like scribbles."""
    makers = (_clutter_line, _clutter_arc, _clutter_blob, _clutter_scribble)
    for _ in range(count):
        polygons = makers[int(rng.integers(len(makers)))](rng, canvas.size / _SS, scale)
        canvas.paint(_polygons_mask([(p, 1) for p in polygons]), _random_colour(rng), owner)


def _clutter_line(rng, size: float, scale: float) -> list[np.ndarray]:
    p0 = rng.uniform(0, size, 2)
    p1 = p0 + _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(15, 140) * scale
    return [_capsule(p0, p1, rng.uniform(0.4, 2.0) * scale)]


def _clutter_arc(rng, size: float, scale: float) -> list[np.ndarray]:
    centre, radius = rng.uniform(0, size, 2), rng.uniform(8, 60) * scale
    start = rng.uniform(0, 2 * np.pi)
    t = np.linspace(start, start + rng.uniform(0.6, 4.5), 24)
    half_width = rng.uniform(0.4, 2.0) * scale
    outer = centre + (radius + half_width) * np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = centre + (radius - half_width) * np.stack([np.cos(t), np.sin(t)], axis=1)
    return [np.concatenate([outer, inner[::-1]])]


def _clutter_blob(rng, size: float, scale: float) -> list[np.ndarray]:
    """An irregular smooth blob (random low harmonics on a circle), unlike any class shape."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    k = np.arange(2, 6)[:, None]
    harmonics = rng.uniform(0.06, 0.22, (4, 1)) * np.cos(k * t + rng.uniform(0, 2 * np.pi, (4, 1)))
    radius = _log_uniform(rng, 5, 45) * scale * (1 + harmonics.sum(axis=0))
    return [rng.uniform(0, size, 2) + radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)]


def _clutter_scribble(rng, size: float, scale: float) -> list[np.ndarray]:
    """A row of small zigzag strokes, like handwriting."""
    n = int(rng.integers(6, 20))
    height = rng.uniform(3, 10) * scale
    steps = np.stack([rng.uniform(1, 4, n) * scale, rng.uniform(-1, 1, n) * height], axis=1)
    points = _rotate(np.cumsum(steps, axis=0), rng.uniform(-0.5, 0.5)) + rng.uniform(0, size, 2)
    width = rng.uniform(0.4, 1.0) * scale
    return [_capsule(a, b, width, n=4) for a, b in zip(points[:-1], points[1:])]


# === Detection scene ===


@dataclass
class _Shape:
    category_id: int
    bbox: list[float]  # xywh, clipped to the image
    pixels: int  # 2x canvas pixels inside the image
    visible: int  # of those, pixels not covered by anything drawn later


def _detection_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    scale = size / DEFAULT_IMAGE_SIZE
    canvas = _Canvas(_background(rng, size))
    _draw_clutter(canvas, rng, int(rng.integers(2, 9)), scale)
    shapes: list[_Shape] = []
    low, high = _OBJECTS_PER_IMAGE
    num_objects = 0 if rng.random() < _EMPTY_IMAGE_FRACTION else int(rng.integers(low, high + 1))
    for _ in range(num_objects):
        _place_shape(canvas, rng, scale, shapes)
    _draw_clutter(canvas, rng, int(rng.integers(0, 3)), scale * 0.5, owner=-1)
    visible = np.bincount(canvas.owner[canvas.owner > 0], minlength=len(shapes) + 1)[1:]
    objects = [
        {
            "category_id": shape.category_id,
            "bbox": shape.bbox,
            "area": round(shape.pixels / _SS**2, 2),
        }
        for shape, pixels in zip(shapes, visible)
        if pixels >= _MIN_VISIBLE_LABELED * shape.pixels
    ]
    return canvas.finish(rng), objects


def _place_shape(
    canvas: _Canvas, rng: np.random.Generator, scale: float, shapes: list[_Shape]
) -> None:
    """Draws a random shape where it leaves every earlier one mostly visible and appends it to
    `shapes`; draws nothing when no such place is found."""
    class_index = int(rng.integers(len(DETECTION_CLASSES)))
    unit_polygons = _shape_polygons(DETECTION_CLASSES[class_index], rng)
    extent = _log_uniform(rng, *_OBJECT_SIZE_RANGE) * scale
    stretch = rng.uniform(0.9, 1.1)
    angle = rng.uniform(0, 2 * np.pi)
    size = canvas.size / _SS
    for _ in range(_PLACEMENT_TRIES):
        centre = rng.uniform(0, size, 2)
        polygons = [
            (_rotate(p * extent * (stretch, 1 / stretch), angle) + centre, fill)
            for p, fill in unit_polygons
        ]
        mask = _polygons_mask(polygons)
        under = canvas.owners_under(mask)
        if under.size < _MIN_INSIDE * mask.pixels.sum():
            continue
        covered = np.bincount(under[under > 0], minlength=len(shapes) + 1)[1:]
        if any(
            shape.visible - c < _MIN_VISIBLE * shape.pixels for shape, c in zip(shapes, covered)
        ):
            continue
        for shape, c in zip(shapes, covered):
            shape.visible -= int(c)
        outline = polygons[0][0]
        x0, y0 = np.maximum(outline.min(axis=0), 0)
        x1, y1 = np.minimum(outline.max(axis=0), size)
        colour = _contrasting_colour(rng, canvas.mean_colour((x0, y0, x1, y1)))
        canvas.paint(mask, _shaded_patch(rng, colour, mask.pixels.shape), owner=len(shapes) + 1)
        shapes.append(
            _Shape(class_index + 1, _round([x0, y0, x1 - x0, y1 - y0]), under.size, under.size)
        )
        return


def _shape_polygons(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """(vertices, fill) polygons of a class shape, centred, the longer side of its box 1."""
    if name == "circle":
        polygons = [(_ellipse((0, 0), 1, 1, n=48), 1)]
    elif name == "square":
        polygons = [(_ellipse((0, 0), 1, 1, np.pi / 4, n=4), 1)]
    elif name == "triangle":
        polygons = [(_ellipse((0, 0), 1, 1, n=3), 1)]
    elif name == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        polygons = [(_unit_arc(0.0, 2 * np.pi, 10) * radii[:, None], 1)]
    elif name == "cross":
        t = rng.uniform(0.28, 0.42)  # half the arm width
        arm = np.array([[t, t], [t, 1], [-t, 1], [-t, t]])
        polygons = [(np.concatenate([_rotate(arm, k * np.pi / 2) for k in range(4)]), 1)]
    elif name == "hexagon":
        polygons = [(_ellipse((0, 0), 1, 1, n=6), 1)]
    elif name == "ring":
        hole = rng.uniform(0.45, 0.65)
        polygons = [(_ellipse((0, 0), 1, 1, n=48), 1), (_ellipse((0, 0), hole, hole, n=48), 0)]
    else:
        raise ValueError(f"unknown shape {name!r}; valid choices: {', '.join(DETECTION_CLASSES)}")
    outline = polygons[0][0]
    low, high = outline.min(axis=0), outline.max(axis=0)
    centre, extent = (low + high) / 2, (high - low).max()
    return [((p - centre) / extent, fill) for p, fill in polygons]


# === Pose scene ===


@dataclass
class _Piece:
    polygons: list[np.ndarray]
    colour: tuple[int, int, int]


@dataclass
class _Figure:
    """A person ready to draw: keypoints in 1x image coordinates, parts in drawing order."""

    keypoints: np.ndarray  # (17, 2)
    labeled: np.ndarray  # (17,) bool: False for face points the view hides (back of head, profile)
    parts: list[tuple[int, list[_Piece]]]  # (part id, pieces), back to front


def _pose_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    scale = size / DEFAULT_IMAGE_SIZE
    canvas = _Canvas(_background(rng, size))
    _draw_clutter(canvas, rng, int(rng.integers(2, 9)), scale)
    figures = _place_figures(rng, size, scale)
    person_masks = [
        _draw_figure(canvas, figure, 1 + i * _PARTS_PER_PERSON) for i, figure in enumerate(figures)
    ]
    if figures and rng.random() < _OCCLUDER_PROBABILITY:
        _draw_occluders(canvas, rng, figures)
    _draw_clutter(canvas, rng, int(rng.integers(0, 3)), scale * 0.5, owner=-1)
    objects = [
        _person_annotation(canvas, rng, figure, mask, 1 + i * _PARTS_PER_PERSON)
        for i, (figure, mask) in enumerate(zip(figures, person_masks))
    ]
    return canvas.finish(rng), [obj for obj in objects if obj is not None]


def _place_figures(rng: np.random.Generator, size: int, scale: float) -> list[_Figure]:
    """1-4 random figures, mostly inside the image, overlapping each other only a little."""
    figures, boxes = [], []
    for _ in range(int(rng.integers(_PERSONS_PER_IMAGE[0], _PERSONS_PER_IMAGE[1] + 1))):
        for _ in range(_PLACEMENT_TRIES):
            height = _log_uniform(rng, *_PERSON_HEIGHT_RANGE) * scale
            figure = _random_figure(rng, height, rng.uniform(0.1, 0.9, 2) * size)
            inside = np.all((figure.keypoints >= 0) & (figure.keypoints < size), axis=1)
            box = np.concatenate([figure.keypoints.min(axis=0), figure.keypoints.max(axis=0)])
            if inside.sum() >= _MIN_KEYPOINTS_INSIDE and all(
                _iou(box, b) <= _MAX_PERSON_IOU for b in boxes
            ):
                figures.append(figure)
                boxes.append(box)
                break
    return figures


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


@dataclass
class _View:
    """How a figure faces the camera, and its body frame in the image."""

    facing: int  # profile views: +1 facing image-right, -1 image-left; 0 front and back
    back: bool
    width: float  # shoulder and hip spread, 1 in a full front view
    up: np.ndarray  # unit vector from hips to neck
    across: np.ndarray  # unit vector perpendicular to `up`, toward image-right when upright
    left: np.ndarray  # unit vector toward the figure's left side


def _random_view(rng: np.random.Generator) -> _View:
    """Front (the figure's left on image right), back (mirrored) or profile. A profile figure is
    turned slightly either way, so its left and right joints stay a little apart."""
    kind = rng.choice(["front", "back", "profile"], p=[0.45, 0.2, 0.35])
    up = _unit(-np.pi / 2 + rng.normal(0, 0.15))
    across = np.array([-up[1], up[0]])
    if kind == "profile":
        facing, side, width = (
            int(rng.choice([-1, 1])),
            int(rng.choice([-1, 1])),
            rng.uniform(0.1, 0.3),
        )
    else:
        facing, side, width = 0, (1 if kind == "front" else -1), rng.uniform(0.8, 1.0)
    return _View(facing, kind == "back", width, up, across, across * side)


def _random_figure(rng: np.random.Generator, h: float, hip_centre: np.ndarray) -> _Figure:
    """A figure of standing height `h` in a random pose and view."""
    view = _random_view(rng)
    up, left = view.up, view.left
    kp = np.zeros((17, 2))
    neck = hip_centre + up * 0.3 * h
    shoulder_centre = neck - up * 0.02 * h
    shoulder_offset, hip_offset = left * 0.13 * h * view.width, left * 0.09 * h * view.width
    kp[5], kp[6] = shoulder_centre + shoulder_offset, shoulder_centre - shoulder_offset
    kp[11], kp[12] = hip_centre + hip_offset, hip_centre - hip_offset
    for sign, (shoulder, elbow, wrist) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        kp[elbow], kp[wrist] = _limb(rng, view, kp[shoulder], sign, 0.17 * h, 0.15 * h, arm=True)
    for sign, (hip, knee, ankle) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        kp[knee], kp[ankle] = _limb(rng, view, kp[hip], sign, 0.24 * h, 0.23 * h, arm=False)
    labeled = np.ones(17, bool)
    head = _head(rng, view, kp, labeled, neck, h)
    parts = _body_parts(rng, view, kp, neck, hip_centre, h, head)
    return _Figure(kp, labeled, parts)


def _limb(rng, view: _View, root, sign: int, upper: float, lower: float, arm: bool):
    """Middle and end joints of an arm or leg (`sign` +1 left, -1 right): raised from hanging
    toward its side (front, back) or forward (profile), then bent. In profile, elbows flex
    forward and knees backward."""
    if arm:
        raise_angle = rng.uniform(-1.0, 2.6) if view.facing else rng.uniform(-0.3, 2.8)
        bend = rng.uniform(0, 2.4) if view.facing else rng.uniform(-2.2, 2.2)
    else:
        raise_angle = rng.uniform(-0.5, 1.4) if view.facing else rng.uniform(-0.15, 0.6)
        bend = rng.uniform(0, 1.8) if view.facing else rng.uniform(-0.5, 0.5)
    swing = view.across * view.facing if view.facing else view.left * sign
    direction = -view.up * np.cos(raise_angle) + swing * np.sin(raise_angle)
    middle = root + direction * upper
    if view.facing:
        # In image coordinates (y down) a negative angle turns a hanging limb toward +x.
        bend *= -view.facing if arm else view.facing
    return middle, middle + _rotate(direction[None], bend)[0] * lower


def _head(rng, view: _View, kp: np.ndarray, labeled: np.ndarray, neck, h: float) -> list[_Piece]:
    """Sets the face keypoints (and `labeled` for those the view hides); returns the head pieces:
    neck and head, ears in their side's colour, eye dots, nose."""
    head_up = _rotate(view.up[None], rng.normal(0, 0.2))[0]
    centre = neck + head_up * 0.14 * h
    rx, ry = (0.075 if view.facing else 0.07) * h, 0.085 * h
    head_across = np.array([-head_up[1], head_up[0]])
    angle = np.arctan2(head_across[1], head_across[0])
    skin = _hsv(rng.uniform(0.02, 0.11), rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.95))
    eye_radius = max(0.14 * rx, 0.75)
    dark = (20, 20, 25)

    def at(across_offset: float, up_offset: float) -> np.ndarray:
        return centre + head_across * across_offset * rx + head_up * up_offset * ry

    def dot(point, radius: float, colour) -> _Piece:
        return _Piece([_ellipse(point, radius, radius, n=12)], colour)

    def ear(point, is_left: bool) -> _Piece:
        return _Piece(
            [_ellipse(point, 0.24 * rx, 0.3 * ry, angle, n=16)], _side_colour(rng, is_left)
        )

    neck_piece = _Piece([_capsule(neck, centre, 0.03 * h)], skin)
    if view.facing:
        f = view.facing
        near_ear = RIGHT_EAR if f == 1 else LEFT_EAR  # facing image-right shows the right side
        near_eye, far_ear = near_ear - 2, LEFT_EAR + RIGHT_EAR - near_ear
        kp[NOSE], kp[near_eye], kp[near_ear] = (
            at(1.08 * f, -0.05),
            at(0.55 * f, 0.2),
            at(-0.1 * f, 0.05),
        )
        labeled[[far_ear - 2, far_ear]] = False
        nose = _ellipse(at(0.95 * f, -0.05), 0.22 * rx, 0.16 * ry, angle)
        head = _Piece([_ellipse(centre, rx, ry, angle), nose], skin)
        return [
            neck_piece,
            head,
            ear(kp[near_ear], near_ear == LEFT_EAR),
            dot(kp[near_eye], eye_radius, dark),
        ]
    side = float(np.dot(view.left, view.across))  # +1 front, -1 back
    kp[LEFT_EAR], kp[RIGHT_EAR] = at(0.98 * side, 0.05), at(-0.98 * side, 0.05)
    ears = [ear(kp[LEFT_EAR], True), ear(kp[RIGHT_EAR], False)]
    if view.back:
        labeled[[NOSE, LEFT_EYE, RIGHT_EYE]] = False
        hair = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.35))
        return [neck_piece, *ears, _Piece([_ellipse(centre, rx, ry, angle)], hair)]
    kp[NOSE], kp[LEFT_EYE], kp[RIGHT_EYE] = (
        at(0, -0.15),
        at(0.38 * side, 0.18),
        at(-0.38 * side, 0.18),
    )
    return [
        neck_piece,
        *ears,
        _Piece([_ellipse(centre, rx, ry, angle)], skin),
        dot(kp[LEFT_EYE], eye_radius, dark),
        dot(kp[RIGHT_EYE], eye_radius, dark),
        dot(kp[NOSE], max(0.13 * rx, 0.7), tuple(int(c * 0.7) for c in skin)),
    ]


def _side_colour(
    rng: np.random.Generator, is_left: bool, value_scale: float = 1.0
) -> tuple[int, int, int]:
    hues = _LEFT_HUES if is_left else _RIGHT_HUES
    return _hsv(rng.uniform(*hues), rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95) * value_scale)


def _body_parts(
    rng, view: _View, kp, neck, hip_centre, h: float, head: list[_Piece]
) -> list[tuple[int, list[_Piece]]]:
    """Torso, limbs and head in drawing order (back to front)."""
    pieces = {TORSO: [_torso(rng, view, neck, hip_centre, h)], HEAD: head}
    for part, (a, b, c), is_left in (
        (LEFT_ARM, (5, 7, 9), True), (RIGHT_ARM, (6, 8, 10), False),
        (LEFT_LEG, (11, 13, 15), True), (RIGHT_LEG, (12, 14, 16), False),
    ):  # fmt: skip
        is_arm = part in (LEFT_ARM, RIGHT_ARM)
        upper_colour = _side_colour(rng, is_left, 1.0 if is_arm else 0.85)
        lower_colour = tuple(int(v * 0.75) for v in upper_colour)
        upper_radius, lower_radius = (0.035, 0.03) if is_arm else (0.05, 0.04)
        if is_arm:
            end = _ellipse(kp[c], 0.035 * h, 0.035 * h, n=12)  # hand
        else:
            toe = view.across * view.facing * 0.08 * h if view.facing else -view.up * 0.015 * h
            end = _capsule(kp[c], kp[c] + toe, 0.025 * h)  # foot
        pieces[part] = [
            _Piece([_capsule(kp[a], kp[b], upper_radius * h)], upper_colour),
            _Piece([_capsule(kp[b], kp[c], lower_radius * h), end], lower_colour),
        ]
    if view.facing:
        near_is_left = view.facing == -1  # facing image-left shows the left side
        far_arm, near_arm = (RIGHT_ARM, LEFT_ARM) if near_is_left else (LEFT_ARM, RIGHT_ARM)
        far_leg, near_leg = (RIGHT_LEG, LEFT_LEG) if near_is_left else (LEFT_LEG, RIGHT_LEG)
        order = [far_arm, far_leg, TORSO, near_leg, HEAD, near_arm]
    else:
        legs, arms = [LEFT_LEG, RIGHT_LEG], [LEFT_ARM, RIGHT_ARM]
        rng.shuffle(legs)
        rng.shuffle(arms)
        order = legs + [TORSO, HEAD] + arms
    return [(part, pieces[part]) for part in order]


def _torso(rng, view: _View, neck, hip_centre, h: float) -> _Piece:
    """A rounded quadrilateral from the shoulders to the hips; never thinner than a chest."""
    top = neck - view.up * 0.02 * h
    half_top, half_bottom = max(0.13 * view.width, 0.075) * h, max(0.09 * view.width, 0.065) * h
    corners = [
        top + view.across * half_top,
        top - view.across * half_top,
        hip_centre - view.across * half_bottom,
        hip_centre + view.across * half_bottom,
    ]
    edges = [_capsule(a, b, 0.03 * h) for a, b in zip(corners, corners[1:] + corners[:1])]
    return _Piece([np.array(corners), *edges], _torso_colour(rng))


def _torso_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.25:
        return _hsv(0, 0, rng.uniform(0.2, 0.85))  # grey
    hues = _TORSO_HUES[int(rng.integers(len(_TORSO_HUES)))]
    return _hsv(rng.uniform(*hues), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9))


def _draw_figure(canvas: _Canvas, figure: _Figure, owner_base: int) -> np.ndarray:
    """Draws a figure; returns its full (occluded parts included) 2x mask on the canvas."""
    person = np.zeros((canvas.size, canvas.size), bool)
    for part, pieces in figure.parts:
        for piece in pieces:
            mask = _polygons_mask([(p, 1) for p in piece.polygons])
            canvas.paint(mask, piece.colour, owner_base + part)
            region, local = mask.on_canvas(canvas.size)
            person[region] |= local
    return person


def _draw_occluders(canvas: _Canvas, rng: np.random.Generator, figures: list[_Figure]) -> None:
    """Rectangles or blobs over random keypoints, so some keypoints are occluded (v=1)."""
    for _ in range(int(rng.integers(1, 3))):
        figure = figures[int(rng.integers(len(figures)))]
        centre = figure.keypoints[int(rng.integers(17))] + rng.normal(0, 3, 2)
        body_height = np.ptp(figure.keypoints[:, 1])
        half = rng.uniform(0.06, 0.16, 2) * max(body_height, 40)
        if rng.random() < 0.5:
            outline = (
                _rotate(
                    np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half, rng.uniform(0, np.pi)
                )
                + centre
            )
        else:
            outline = _ellipse(centre, *half, rng.uniform(0, np.pi), n=24)
        mask = _polygons_mask([(outline, 1)])
        canvas.paint(mask, _shaded_patch(rng, _random_colour(rng), mask.pixels.shape), owner=-1)


def _person_annotation(
    canvas: _Canvas, rng, figure: _Figure, person: np.ndarray, owner_base: int
) -> dict | None:
    rows, cols = np.flatnonzero(person.any(axis=1)), np.flatnonzero(person.any(axis=0))
    if rows.size == 0:
        return None
    x0, x1, y0, y1 = cols[0] / _SS, (cols[-1] + 1) / _SS, rows[0] / _SS, (rows[-1] + 1) / _SS
    keypoints = []
    for k, (x, y) in enumerate(figure.keypoints):
        v = _visibility(canvas, figure, k, x, y, owner_base)
        if v and rng.random() < _KEYPOINT_DROP_RATE:
            v = 0
        keypoints += [round(float(x), 2), round(float(y), 2), v] if v else [0, 0, 0]
    return {
        "category_id": 1,
        "bbox": _round([x0, y0, x1 - x0, y1 - y0]),
        "area": round(float(person.sum()) / _SS**2, 2),
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
    }


def _visibility(
    canvas: _Canvas, figure: _Figure, k: int, x: float, y: float, owner_base: int
) -> int:
    """COCO visibility: 0 unlabeled (outside or hidden by the view), 1 occluded, 2 visible."""
    limit = canvas.size / _SS
    if not figure.labeled[k] or not (0 <= x < limit and 0 <= y < limit):
        return 0
    owner = canvas.owner[int(y * _SS), int(x * _SS)]
    return 2 if owner in {owner_base + part for part in _KEYPOINT_PARTS[k]} else 1
