"""The pose task end to end on a tiny synthetic set: targets, training, prediction, OKS AP."""

import functools
import glob
import json

import numpy as np
import pytest

from tfqat.data import crop as crop_lib
from tfqat.data import pipeline, synthetic
from tfqat.data.coco import load_coco
from tfqat.losses.pose import encode_heatmaps
from tfqat.postprocess.metrics import coco_metrics
from tfqat.tasks.common import keras_predict_fn
from tfqat.tasks.pose import PoseConfig, PoseTask
from tfqat.tf_compat import keras, tf

INPUT = (64, 32)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pose")
    paths = synthetic.make_pose(str(root / "data"), num_train=6, num_val=4, image_size=128)
    # One val person without any labeled keypoint: COCO evaluation still expects a prediction.
    with open(paths["val_annotations"]) as f:
        data = json.load(f)
    data["annotations"][0]["keypoints"] = [0] * 51
    data["annotations"][0]["num_keypoints"] = 0
    with open(paths["val_annotations"], "w") as f:
        json.dump(data, f)
    cache = str(root / "cache")
    train = load_coco(paths["train_annotations"], paths["train_images"], "pose", cache_dir=cache)
    val = load_coco(paths["val_annotations"], paths["val_images"], "pose", cache_dir=cache)
    return train, val


def _task(datasets, **config):
    config = {
        "input_size": INPUT,
        "model_size": "n",
        "batch_size": 4,
        "val_batch_size": 4,
        "summary_images": 2,
        **config,
    }
    return PoseTask(PoseConfig(**config), *datasets)


def _num_persons(dataset):
    return sum(len(s.ann_ids) for s in dataset.samples)


def test_ground_truth_as_results_scores_ap_one(datasets):
    _, val = datasets
    with open(val.annotation_file) as f:
        annotations = json.load(f)["annotations"]
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in annotations
        if a["num_keypoints"] > 0
    ]
    metrics = coco_metrics(val.annotation_file, results, "keypoints")
    assert metrics == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}


def test_perfect_heatmaps_through_predict_score_ap_one(datasets):
    """Encoded GT targets as model outputs -> decode -> image coordinates -> OKS AP 1.0."""
    task = _task(datasets)
    oracle = []
    for batch in pipeline.pose_dataset(task.val_set, INPUT, 4, training=False):
        heatmaps, _ = encode_heatmaps(batch["keypoints"], INPUT, task.stride, task.config.sigma)
        p = np.clip(heatmaps.numpy(), 1e-4, 1 - 1e-4)
        oracle.append((batch["images"].numpy(), np.log(p / (1 - p))))

    def predict_fn(images):
        expected, logits = oracle.pop(0)
        np.testing.assert_array_equal(images, expected)
        return [logits]

    results = task.predict(predict_fn)
    assert not oracle
    assert len(results) == _num_persons(task.val_set)  # the unlabeled person too
    assert {r["image_id"] for r in results} == {s.image_id for s in task.val_set.samples}
    assert all(len(r["keypoints"]) == 51 for r in results)
    assert task.metrics(results) == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}


def test_flipped_crop_targets_mirror_the_other_side(datasets, monkeypatch):
    """Flipped crop: the target of left_* is the mirrored target of right_*, and vice versa."""
    monkeypatch.setattr(
        pipeline,
        "pose_dataset",
        functools.partial(pipeline.pose_dataset, scale_range=(1.0, 1.0), rotation_prob=0.0),
    )

    def targets(flip_prob):
        _, t = next(iter(_task(datasets, batch_size=6, flip_prob=flip_prob).train_dataset(0)))
        return t["heatmaps"].numpy(), t["weights"].numpy()

    plain, plain_weights = targets(0.0)
    flipped, flipped_weights = targets(1.0)
    swap = crop_lib.flip_permutation(datasets[0].keypoint_names)
    assert swap != list(range(len(swap)))
    np.testing.assert_allclose(flipped, plain[:, :, ::-1, swap], atol=1e-5)
    np.testing.assert_array_equal(flipped_weights, plain_weights[:, swap])
    assert plain_weights.sum() > 0


def test_train_dataset_shapes_and_steps(datasets):
    task = _task(datasets)
    images, targets = next(iter(task.train_dataset(0)))
    assert images.shape == (4, *INPUT, 3) and images.dtype == tf.float32
    assert targets["heatmaps"].shape == (4, INPUT[0] // 4, INPUT[1] // 4, 17)
    assert targets["weights"].shape == (4, 17)
    persons = len(pipeline.person_instances(task.train_set, training=True)["sample"])
    assert task.steps_per_epoch == max(1, persons // 4)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(datasets):
    task = _task(datasets)
    keras.utils.set_random_seed(0)
    model = task.build_model()
    images, targets = next(iter(task.train_dataset(0)))
    optimizer = keras.optimizers.Adam(3e-3)

    def step():
        with tf.GradientTape() as tape:
            losses = task.loss(targets, model(images, training=True))
        grads = tape.gradient(losses["total"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return float(losses["total"])

    first = step()
    for _ in range(8):
        last = step()
    assert np.isfinite(first) and last < 0.8 * first, (first, last)


def test_validate_writes_metrics_and_skeleton_images(datasets, tmp_path):
    task = _task(datasets)
    model = task.build_model()
    writer = tf.summary.create_file_writer(str(tmp_path))
    metrics, results = task.validate(model, step=1, writer=writer)
    assert set(metrics) == {"AP", "AP50"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert len(results) == _num_persons(task.val_set)
    tags = set()
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {"metrics/AP", "metrics/AP50", "val_predictions"} <= tags
    pictures = task._summary_images(keras_predict_fn(model))
    assert pictures.shape == (2, 2 * INPUT[0], 2 * INPUT[1], 3)
