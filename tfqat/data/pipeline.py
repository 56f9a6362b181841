"""tf.data input pipelines for detection and pose, fed from a validated `CocoDataset`.

Images are decoded and letterboxed (or cropped) by the same numpy/PIL functions that evaluation
and the TF-free runtime use, so a model sees identical pixels in training and on the device.
"""

import numpy as np

from tfqat.data import crop as crop_lib
from tfqat.data.coco import CocoDataset
from tfqat.data.images import decode_image
from tfqat.data.letterbox import boxes_to_input, letterbox_image, letterbox_params
from tfqat.tf_compat import tf

AUTOTUNE = tf.data.AUTOTUNE
# Decoded, letterboxed detection images are cached in memory when they fit in this many MiB
# (the recipe's --memory_cache_mb); a larger set streams from disk.
DEFAULT_MEMORY_CACHE_MB = 4096


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


# === Detection ===


def detection_targets(dataset: CocoDataset, input_size, min_box_size: float = 1.0):
    """Letterboxed xyxy boxes and class indices per image, padded with -1, and a drop count.

    A box narrower or shorter than `min_box_size` input pixels after letterboxing carries no
    signal a stride-8 detector can learn from; it is dropped from the targets and counted.
    """
    height, width = input_size
    per_image, dropped = [], 0
    for sample in dataset.samples:
        lb = letterbox_params(sample.height, sample.width, height, width)
        boxes = boxes_to_input(sample.boxes.reshape(-1, 4), lb)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & (
            (boxes[:, 3] - boxes[:, 1]) >= min_box_size
        )
        dropped += int((~keep).sum())
        per_image.append((boxes[keep], sample.labels[keep]))
    max_boxes = max([1] + [len(b) for b, _ in per_image])
    boxes = np.zeros((len(per_image), max_boxes, 4), np.float32)
    classes = np.full((len(per_image), max_boxes), -1.0, np.float32)
    for i, (b, c) in enumerate(per_image):
        boxes[i, : len(b)] = b
        classes[i, : len(c)] = c
    return boxes, classes, dropped


def fits_memory_cache(dataset: CocoDataset, input_size, memory_cache_mb: int) -> bool:
    """Whether the set's letterboxed uint8 images fit in `memory_cache_mb` MiB."""
    height, width = input_size
    return len(dataset.samples) * height * width * 3 <= memory_cache_mb << 20


def _letterbox_loader(dataset: CocoDataset, input_size):
    """A tf.data map function: path -> letterboxed uint8 image [H,W,3], by the numpy/PIL
    functions evaluation and the runtime use."""
    height, width = input_size

    def load(path):
        image = decode_image(path.decode(), exif_transpose=dataset.exif_transpose)
        return letterbox_image(image, height, width)[0]

    def load_tf(path):
        image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (height, width, 3))

    return load_tf


def _images_and_targets(
    dataset: CocoDataset, input_size, targets, *, training: bool, seed: int, cache: bool
):
    """(letterboxed image, targets) in sample order, or in training reshuffled every epoch
    from `seed` and repeated.

    Cached: every image is decoded once into memory and the decoded images are shuffled.
    Streamed: the paths and targets are shuffled (a full shuffle of small elements), then
    decoded in parallel, so only the images in flight and prefetched are in memory. A shuffle's
    order depends only on its seed and buffer size, so both give the same stream.
    """
    paths = tf.data.Dataset.from_tensor_slices([s.path for s in dataset.samples])
    targets = tf.data.Dataset.from_tensor_slices(targets)
    load = _letterbox_loader(dataset, input_size)

    def shuffled(ds):
        if not training:
            return ds
        ds = ds.shuffle(len(dataset.samples), seed=seed, reshuffle_each_iteration=True)
        return ds.repeat()

    if cache:
        images = paths.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).cache()
        return shuffled(tf.data.Dataset.zip((images, targets)))
    return shuffled(tf.data.Dataset.zip((paths, targets))).map(
        lambda path, target: (load(path), target), num_parallel_calls=AUTOTUNE, deterministic=True
    )


def detection_augmenter(input_size, *, seed: int, mosaic: bool, jitter=(0.75, 1.25)):
    """keras-cv box-aware augmentation of a batch: mosaic, flip, jittered resize."""
    import keras_cv

    layers = []
    if mosaic:
        layer = keras_cv.layers.Mosaic(bounding_box_format="xyxy", seed=seed)
        # keras-cv 0.9's Mosaic draws its image choices and centres from seeded legacy ops that,
        # in a tf.data map, differ from run to run: one seed gave other batches and float
        # mAP50-95 0.338-0.362 (docs/results/yolo_synthetic.md). One seeded generator draws both.
        generator = tf.random.Generator.from_seed(seed)
        layer._random_generator = generator
        layer.center_sampler = lambda shape, dtype: generator.uniform(shape, 0.25, 0.75, dtype)
        layers.append(layer)
    layers.append(
        keras_cv.layers.RandomFlip(mode="horizontal", bounding_box_format="xyxy", seed=seed + 1)
    )
    if jitter:
        resize = keras_cv.layers.JitteredResize(
            target_size=tuple(input_size),
            scale_factor=tuple(jitter),
            bounding_box_format="xyxy",
            seed=seed + 2,
        )
        # keras-cv 0.9's JitteredResize does not pass its seed on, and would draw its crop
        # offsets from TensorFlow's unseeded global generator.
        resize._random_generator = tf.random.Generator.from_seed(seed + 2)
        layers.append(resize)
    return layers


def detection_dataset(
    dataset: CocoDataset,
    input_size,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    augment: bool = True,
    mosaic: bool = True,
    jitter=(0.75, 1.25),
    min_box_size: float = 1.0,
    memory_cache_mb: int = DEFAULT_MEMORY_CACHE_MB,
):
    """Batches of (float32 images 0..255 [B,H,W,3], {"boxes" xyxy [B,M,4], "classes" [B,M]}).

    Classes are float32 class indices with -1 marking padding. In training the set repeats
    forever, reshuffled every epoch from `seed`. Decoded images are cached in memory when they
    fit in `memory_cache_mb` MiB, else streamed from disk; the batches are the same either way.
    """
    boxes, classes, _ = detection_targets(dataset, input_size, min_box_size)
    cache = fits_memory_cache(dataset, input_size, memory_cache_mb)
    ds = _images_and_targets(
        dataset, input_size, (boxes, classes), training=training, seed=seed, cache=cache
    )
    ds = ds.batch(batch_size, drop_remainder=training)
    max_boxes = boxes.shape[1] * (4 if training and augment and mosaic else 1)

    def to_inputs(image, target):
        return {
            "images": tf.cast(image, tf.float32),
            "bounding_boxes": {"boxes": target[0], "classes": target[1]},
        }

    ds = ds.map(to_inputs, num_parallel_calls=AUTOTUNE)
    if training and augment:
        # Sequential maps: keras-cv draws from stateful generators, and a parallel map would
        # hand out their numbers in a different order on every run.
        for layer in detection_augmenter(input_size, seed=seed, mosaic=mosaic, jitter=jitter):
            ds = ds.map(layer)
    ds = ds.map(lambda x: _dense_targets(x, max_boxes), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_deterministic_options())


def _dense_targets(inputs, max_boxes: int):
    import keras_cv

    boxes = keras_cv.bounding_box.to_dense(inputs["bounding_boxes"], max_boxes=max_boxes)
    valid = boxes["classes"] >= 0
    images = tf.clip_by_value(inputs["images"], 0.0, 255.0)
    return images, {
        "boxes": tf.where(valid[..., None], boxes["boxes"], 0.0),
        "classes": tf.where(valid, boxes["classes"], -1.0),
    }


# === Pose ===


def person_instances(dataset: CocoDataset, *, training: bool):
    """Flat arrays over non-crowd persons: sample index, annotation id, box xywh, keypoints.

    Persons with no labeled keypoint carry no training signal and are skipped in training;
    evaluation keeps every GT person box, as COCO top-down evaluation does.
    """
    rows = []
    for index, sample in enumerate(dataset.samples):
        for j in range(len(sample.boxes)):
            keypoints = sample.keypoints[j]
            if training and not (keypoints[:, 2] > 0).any():
                continue
            x1, y1, x2, y2 = sample.boxes[j]
            rows.append((index, int(sample.ann_ids[j]), (x1, y1, x2 - x1, y2 - y1), keypoints))
    num_keypoints = len(dataset.keypoint_names)
    return {
        "sample": np.array([r[0] for r in rows], np.int64),
        "ann_id": np.array([r[1] for r in rows], np.int64),
        "box": np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
        "keypoints": np.array([r[3] for r in rows], np.float32).reshape(-1, num_keypoints, 3),
    }


def pose_dataset(
    dataset: CocoDataset,
    input_size,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    augment: bool = True,
    scale_range=(0.75, 1.25),
    max_rotation: float = 30.0,
    rotation_prob: float = 0.6,
    flip_prob: float = 0.5,
    padding: float = crop_lib.BOX_PADDING,
):
    """Batches of {"images" float32 crops [B,H,W,3], "keypoints" [B,K,3], ...}.

    Keypoints are (x, y, v) in the crop's continuous pixel coordinates; a keypoint that leaves
    the crop keeps its coordinates (the target encoder gives it no weight). Random crop
    parameters are drawn statelessly from (seed, element counter), so the stream is the same
    whatever the parallelism.
    """
    height, width = input_size
    persons = person_instances(dataset, training=training)
    if len(persons["sample"]) == 0:
        raise ValueError(f"{dataset.annotation_file}: no person with labeled keypoints")
    paths = np.array([dataset.samples[i].path for i in persons["sample"]])
    flip_index = np.array(crop_lib.flip_permutation(dataset.keypoint_names), np.int32)
    ds = tf.data.Dataset.from_tensor_slices(
        (paths, persons["box"], persons["keypoints"], persons["ann_id"])
    )
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate()

    def params(counter):
        if not (training and augment):
            return tf.constant([1.0, 0.0, 0.0])
        u = tf.random.stateless_uniform([4], seed=tf.stack([tf.constant(seed, tf.int64), counter]))
        scale = scale_range[0] + u[0] * (scale_range[1] - scale_range[0])
        angle = tf.where(u[1] < rotation_prob, (2.0 * u[2] - 1.0) * max_rotation, 0.0)
        flip = tf.cast(u[3] < flip_prob, tf.float32)
        return tf.stack([scale, angle, flip])

    def load(path, box, scale, angle, flip):
        image = decode_image(path.decode(), exif_transpose=dataset.exif_transpose)
        matrix = crop_lib.crop_matrix(box, (height, width), padding, scale, angle, bool(flip))
        return crop_lib.warp_crop(image, matrix, (height, width)), matrix.astype(np.float32)

    def element(counter, inputs):
        path, box, keypoints, ann_id = inputs
        p = params(counter)
        crop, matrix = tf.numpy_function(
            load, [path, box, p[0], p[1], p[2]], (tf.uint8, tf.float32), stateful=False
        )
        crop = tf.ensure_shape(crop, (height, width, 3))
        matrix = tf.ensure_shape(matrix, (3, 3))
        keypoints = _keypoints_to_crop(keypoints, matrix, p[2] > 0.5, flip_index)
        return {
            "images": tf.cast(crop, tf.float32),
            "keypoints": keypoints,
            "matrix": matrix,
            "ann_id": ann_id,
        }

    ds = ds.map(element, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE).with_options(_deterministic_options())


def _keypoints_to_crop(keypoints, crop_to_image, flipped, flip_index):
    """Maps image keypoints into the crop and, when the crop is mirrored, swaps left/right."""
    image_to_crop = tf.linalg.inv(crop_to_image)
    xy1 = tf.concat([keypoints[:, :2], tf.ones_like(keypoints[:, :1])], axis=-1)
    xy = tf.matmul(xy1, image_to_crop, transpose_b=True)[:, :2]
    out = tf.concat([xy, keypoints[:, 2:]], axis=-1)
    return tf.where(flipped, tf.gather(out, flip_index), out)


# === Looking at what the model is fed ===


def render_samples(
    dataset: CocoDataset, task: str, n: int, out_dir: str, input_size, seed: int = 0
):
    """Writes `n` PNGs of training batches after augmentation, with targets drawn."""
    import os

    from tfqat.data import draw

    os.makedirs(out_dir, exist_ok=True)
    batch = min(n, 8)
    if task == "detection":
        ds = detection_dataset(dataset, input_size, max(batch, 4), training=True, seed=seed)
        elements = ((im, t) for images, t in ds for im, t in _unbatch_detection(images, t))
    else:
        ds = pose_dataset(dataset, input_size, batch, training=True, seed=seed)
        elements = (
            (im, k) for b in ds for im, k in zip(b["images"].numpy(), b["keypoints"].numpy())
        )
    written = []
    for i, (image, target) in enumerate(elements):
        if i >= n:
            break
        if task == "detection":
            picture = draw.draw_boxes(image, target[0], target[1], dataset.category_names)
        else:
            picture = draw.draw_keypoints(image, target, dataset.skeleton)
        path = os.path.join(out_dir, f"{task}_sample_{i:03d}.png")
        picture.save(path)
        written.append(path)
    return written


def _unbatch_detection(images, targets):
    for image, boxes, classes in zip(
        images.numpy(), targets["boxes"].numpy(), targets["classes"].numpy()
    ):
        valid = classes >= 0
        yield image, (boxes[valid], classes[valid].astype(int))
