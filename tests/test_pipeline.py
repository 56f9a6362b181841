"""The tf.data pipelines keep boxes and keypoints on the pixels they belong to."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from tfqat.data import crop as crop_lib
from tfqat.data import pipeline
from tfqat.data.coco import load_coco
from tfqat.tf_compat import tf

RED, BLUE, GRAY = (255, 0, 0), (0, 0, 255), (128, 128, 128)
KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_wrist", "right_wrist"]


def _write_dataset(root, images, annotations, categories):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    records = []
    for i, (name, array) in enumerate(images, start=1):
        Image.fromarray(array).save(os.path.join(root, "images", name))
        records.append(
            {"id": i, "file_name": name, "height": array.shape[0], "width": array.shape[1]}
        )
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": records, "annotations": annotations, "categories": categories}, f)
    return path, os.path.join(root, "images")


def _rectangles_dataset(tmp_path, n=4):
    """Each image: one red rectangle on gray, annotated with its exact box."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(1, n + 1):
        h, w = 96, 128
        array = np.full((h, w, 3), GRAY, np.uint8)
        x, y = int(rng.integers(5, 60)), int(rng.integers(5, 40))
        bw, bh = int(rng.integers(20, 50)), int(rng.integers(20, 40))
        array[y : y + bh, x : x + bw] = RED
        images.append((f"{i}.png", array))
        annotations.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 7,
                "bbox": [x, y, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
            }
        )
    path, image_dir = _write_dataset(tmp_path, images, annotations, [{"id": 7, "name": "box"}])
    return load_coco(path, image_dir, "detection", cache_dir=str(tmp_path / "cache"))


def test_detection_batches_have_fixed_shapes_and_padding(tmp_path):
    ds = _rectangles_dataset(tmp_path)
    images, targets = next(iter(pipeline.detection_dataset(ds, (64, 64), 4, training=False)))
    assert images.shape == (4, 64, 64, 3) and images.dtype == tf.float32
    assert targets["boxes"].shape[:2] == targets["classes"].shape
    assert set(np.unique(targets["classes"].numpy())) <= {-1.0, 0.0}


@pytest.mark.parametrize("mosaic", [False, True])
def test_augmented_boxes_stay_on_their_object(tmp_path, mosaic):
    ds = _rectangles_dataset(tmp_path, n=8)
    data = pipeline.detection_dataset(ds, (64, 64), 8, training=True, seed=3, mosaic=mosaic)
    for images, targets in data.take(3):
        for image, boxes, classes in zip(
            images.numpy(), targets["boxes"].numpy(), targets["classes"].numpy()
        ):
            for box in boxes[classes >= 0]:
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
                # The inner part of every box is the red rectangle.
                inner = image[
                    int(y1) + 1 : int(np.ceil(y2)) - 1, int(x1) + 1 : int(np.ceil(x2)) - 1
                ]
                if inner.size:
                    assert inner[..., 0].mean() > 200 and inner[..., 2].mean() < 60


def test_flip_twice_is_identity(tmp_path):
    import keras_cv

    ds = _rectangles_dataset(tmp_path)
    images, targets = next(iter(pipeline.detection_dataset(ds, (64, 64), 4, training=False)))
    flip = keras_cv.layers.RandomFlip(mode="horizontal", rate=1.0, bounding_box_format="xyxy")
    inputs = {"images": images, "bounding_boxes": targets}
    twice = flip(flip(inputs))
    np.testing.assert_allclose(twice["images"], images)
    valid = targets["classes"].numpy() >= 0
    np.testing.assert_allclose(
        twice["bounding_boxes"]["boxes"].numpy()[valid], targets["boxes"].numpy()[valid], atol=1e-4
    )


_FIRST_BATCH_DIGEST = """
import hashlib
from absl import flags
import tfqat
from tfqat.recipe import build
from tfqat.recipe import flags as recipe_flags
from tfqat.tf_compat import keras
recipe_flags.define_flags(flags.FLAGS)
flags.FLAGS(["x", "--flagfile=configs/smoke_yolo.flags"])
fv = flags.FLAGS
task = build.make_task(fv, *build.load_datasets(fv, build.dataset_paths(fv)))
keras.utils.set_random_seed(0)  # what tfqat.train does at start
digest = hashlib.sha256()
for images, targets in task.train_dataset(0).take(2):
    digest.update(images.numpy().tobytes() + targets["boxes"].numpy().tobytes())
print(digest.hexdigest())
"""


def test_detection_pipeline_is_deterministic_across_processes(tmp_path):
    """The smoke recipe's first batches, mosaic included, are the same in two processes
    (keras-cv's Mosaic drew other images and centres in every process until
    pipeline.detection_augmenter gave it a seeded generator)."""
    env = dict(os.environ, TFQAT_CACHE_DIR=str(tmp_path / "cache"))
    digests = [
        subprocess.run(
            [sys.executable, "-c", _FIRST_BATCH_DIGEST],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.split()[-1]
        for _ in range(2)
    ]
    assert digests[0] == digests[1]


def _uses_memory_cache(ds) -> bool:
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    return any(node.op.startswith("CacheDataset") for node in graph.node)


def test_images_are_cached_at_or_below_the_limit_and_streamed_above(tmp_path):
    ds = _rectangles_dataset(tmp_path)  # 4 images
    # 4 x 256 x 341 x 3 bytes is just below 1 MiB, 4 x 256 x 342 x 3 just above.
    assert pipeline.fits_memory_cache(ds, (256, 341), 1)
    assert not pipeline.fits_memory_cache(ds, (256, 342), 1)
    for limit, cached in ((1, True), (0, False)):
        data = pipeline.detection_dataset(ds, (64, 64), 4, training=True, memory_cache_mb=limit)
        assert _uses_memory_cache(data) == cached


def _batches(ds, count, **kwargs):
    tf.keras.utils.set_random_seed(5)  # what tfqat.train does at start
    data = pipeline.detection_dataset(ds, (64, 64), 4, training=True, **kwargs)
    return [(images.numpy(), t["boxes"].numpy()) for images, t in data.take(count)]


def test_streamed_batches_equal_cached_batches(tmp_path):
    ds = _rectangles_dataset(tmp_path, n=8)
    cached = _batches(ds, 6, seed=5)  # three epochs, augmented
    streamed = _batches(ds, 6, seed=5, memory_cache_mb=0)
    for (cached_images, cached_boxes), (images, boxes) in zip(cached, streamed):
        np.testing.assert_array_equal(images, cached_images)
        np.testing.assert_array_equal(boxes, cached_boxes)


def test_streamed_order_is_reshuffled_every_epoch_and_per_start_epoch(tmp_path):
    ds = _rectangles_dataset(tmp_path, n=8)

    def epoch_orders(seed):
        batches = _batches(ds, 6, seed=seed, augment=False, memory_cache_mb=0)
        boxes = np.concatenate([b for _, b in batches])[:, 0]
        return [tuple(map(tuple, boxes[i : i + 8])) for i in (0, 8, 16)]

    orders = epoch_orders(1000)  # DetectionTask.train_dataset(0) of seed 1
    assert all(sorted(order) == sorted(orders[0]) for order in orders)  # each epoch: every image
    assert len(set(orders)) == 3
    assert epoch_orders(1000) == orders
    # A run resumed at epoch 1 draws the seed of its start epoch: no replay of epoch 0's order.
    assert epoch_orders(1001)[0] not in orders


def test_tiny_boxes_after_letterbox_are_dropped_and_counted(tmp_path):
    ds = _rectangles_dataset(tmp_path)
    _, classes, dropped = pipeline.detection_targets(ds, (64, 64), min_box_size=1000)
    assert dropped == 4 and (classes == -1).all()


def _pose_dataset(tmp_path):
    """One figure: left keypoints on red dots, right ones on blue dots, the nose gray-white."""
    h, w = 120, 100
    array = np.full((h, w, 3), GRAY, np.uint8)
    points = {
        "nose": (50, 30),
        "left_eye": (60, 25),
        "right_eye": (40, 25),
        "left_wrist": (75, 80),
        "right_wrist": (25, 80),
    }
    keypoints = []
    for name in KEYPOINT_NAMES:
        x, y = points[name]
        colour = (
            RED if name.startswith("left") else BLUE if name.startswith("right") else (250,) * 3
        )
        array[y - 3 : y + 4, x - 3 : x + 4] = colour
        keypoints += [x + 0.5, y + 0.5, 2]
    annotation = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [20, 15, 60, 75],
        "area": 4500,
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": 5,
    }
    category = {"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES, "skeleton": [[4, 2]]}
    path, image_dir = _write_dataset(tmp_path, [("p.png", array)], [annotation], [category])
    return load_coco(path, image_dir, "pose", cache_dir=str(tmp_path / "cache"))


def test_flip_permutation_swaps_left_and_right():
    assert crop_lib.flip_permutation(KEYPOINT_NAMES) == [0, 2, 1, 4, 3]


def test_pose_augmentation_moves_keypoints_with_pixels_and_swaps_sides(tmp_path):
    ds = _pose_dataset(tmp_path)
    data = pipeline.pose_dataset(
        ds, (64, 48), 1, training=True, seed=1, flip_prob=0.5, rotation_prob=1.0, max_rotation=40.0
    )
    flipped_seen = unflipped_seen = 0
    for batch in data.take(12):
        image, keypoints = batch["images"].numpy()[0], batch["keypoints"].numpy()[0]
        mirrored = np.linalg.det(batch["matrix"].numpy()[0][:2, :2]) < 0
        for name, (x, y, _) in zip(KEYPOINT_NAMES, keypoints):
            if not (0 <= x < 48 and 0 <= y < 64):
                continue
            r, _, b = image[int(y), int(x)]
            if name.startswith("left"):
                # After a flip the person's left side is the one drawn in the right colour.
                assert (b > r) if mirrored else (r > b), (name, mirrored, image[int(y), int(x)])
        flipped_seen += mirrored
        unflipped_seen += not mirrored
    assert flipped_seen and unflipped_seen


def test_pose_eval_crop_maps_back_to_image(tmp_path):
    ds = _pose_dataset(tmp_path)
    batch = next(iter(pipeline.pose_dataset(ds, (64, 48), 1, training=False)))
    matrix = batch["matrix"].numpy()[0]
    back = crop_lib.crop_to_image_points(batch["keypoints"].numpy()[0][:, :2], matrix)
    np.testing.assert_allclose(back, ds.samples[0].keypoints[0][:, :2], atol=1e-3)
