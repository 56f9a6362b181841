"""The pose task: heatmap model, loss, data and validation, glued for the training loop.

Top-down: every person box is cropped (`pipeline.pose_dataset`), the model predicts heatmap
logits for the crop, `tfqat.postprocess.pose` decodes them to crop keypoints, and the crop's
matrix maps those back to the image. Validation crops come from the ground-truth person boxes.
"""

import dataclasses

import numpy as np

from tfqat.data import draw, pipeline
from tfqat.data.coco import CocoDataset
from tfqat.losses.pose import DEFAULT_SIGMA, PoseLoss, encode_heatmaps
from tfqat.models.pose import HEATMAP_STRIDE, OUTPUT_NAMES
from tfqat.postprocess import pose as post
from tfqat.postprocess.metrics import IOU_TYPES, METRIC_NAMES, coco_metrics
from tfqat.tasks.common import input_shard, keras_predict_fn, write_validation
from tfqat.tf_compat import tf

GT_COLOR = (255, 255, 255)
PREDICTION_COLOR = (255, 40, 200)


@dataclasses.dataclass
class PoseConfig:
    input_size: tuple = (128, 96)
    model_size: str = "s"
    activation: str = "relu6"
    batch_size: int = 32
    augment: bool = True
    # Mirroring swaps left/right labels, right for real people. Data whose left/right cue does
    # not mirror (the synthetic figures' warm-left / cool-right limbs) needs 0.
    flip_prob: float = 0.5
    scale_range: tuple = (0.75, 1.25)
    rotation_prob: float = 0.6
    max_rotation: float = 30.0  # degrees
    sigma: float = DEFAULT_SIGMA  # target Gaussian, heatmap pixels
    positive_weight: float = 4.0
    blur_sigma: float = post.DEFAULT_BLUR_SIGMA  # decoder smoothing, heatmap pixels
    seed: int = 0
    val_batch_size: int = 64
    summary_images: int = 4


class PoseTask:
    name = "pose"
    iou_type = IOU_TYPES["pose"]
    primary_metric = METRIC_NAMES[iou_type][0]
    score_output_names = OUTPUT_NAMES  # the heatmaps are the scores

    def __init__(self, config: PoseConfig, train: CocoDataset, val: CocoDataset):
        self.config = config
        self.train_set = train
        self.val_set = val
        self.num_keypoints = len(train.keypoint_names)
        if list(val.keypoint_names) != list(train.keypoint_names):
            raise ValueError(
                f"train and val keypoints differ: {train.keypoint_names} vs {val.keypoint_names}"
            )
        self.stride = HEATMAP_STRIDE
        self.loss = PoseLoss(config.positive_weight)
        self._num_train_persons = len(pipeline.person_instances(train, training=True)["sample"])
        self._image_ids = {int(a): s.image_id for s in val.samples for a in s.ann_ids}
        self._category_id = val.category_ids[0]

    def build_model(self):
        from tfqat.models.pose import build_pose

        c = self.config
        return build_pose(
            self.num_keypoints, tuple(c.input_size), size=c.model_size, activation=c.activation
        )

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self._num_train_persons // self.config.batch_size)

    def train_dataset(self, start_epoch: int, input_context=None):
        """The infinite training batches; under tf.distribute, one input pipeline's shard
        (`input_shard`: its images' persons)."""
        c = self.config
        images, batch_size = input_shard(self.train_set, c.batch_size, input_context)
        ds = pipeline.pose_dataset(
            images,
            c.input_size,
            batch_size,
            training=True,
            seed=c.seed * 1000 + start_epoch,
            augment=c.augment,
            flip_prob=c.flip_prob,
            scale_range=tuple(c.scale_range),
            rotation_prob=c.rotation_prob,
            max_rotation=c.max_rotation,
        )

        def to_targets(batch):
            heatmaps, weights = encode_heatmaps(
                batch["keypoints"], c.input_size, self.stride, c.sigma
            )
            return batch["images"], {"heatmaps": heatmaps, "weights": weights}

        return ds.map(to_targets, num_parallel_calls=tf.data.AUTOTUNE)

    def preprocessed_images(self, count: int, split: str = "train") -> np.ndarray:
        """Crops of the first `count` persons of a split, as validation crops them: float32 0..255.

        Train crops calibrate quantization; val crops compare backends.
        """
        dataset = self.train_set if split == "train" else self.val_set
        ds = pipeline.pose_dataset(dataset, self.config.input_size, 64, training=False)
        crops = np.concatenate([b["images"].numpy() for b in ds.take(-(-count // 64))])
        return crops[:count]

    def _val_batches(self, limit=None):
        """Val crops of every GT person box: numpy dicts of images, keypoints, matrix, ann_id."""
        ds = pipeline.pose_dataset(
            self.val_set, self.config.input_size, self.config.val_batch_size, training=False
        )
        seen = 0
        for batch in ds:
            batch = {k: v.numpy() for k, v in batch.items()}
            if limit is not None:
                batch = {k: v[: limit - seen] for k, v in batch.items()}
            yield batch
            seen += len(batch["ann_id"])
            if limit is not None and seen >= limit:
                return

    def _decode(self, predict_fn, images):
        heatmaps = predict_fn(images.astype(np.float32))[0]
        return post.decode(heatmaps, self.stride, self.config.blur_sigma)

    def predict(self, predict_fn):
        """COCO keypoint results, one per val GT person box (image coordinates)."""
        results = []
        for batch in self._val_batches():
            keypoints = post.to_image(self._decode(predict_fn, batch["images"]), batch["matrix"])
            for ann_id, person in zip(batch["ann_id"], keypoints):
                results.append(
                    post.to_coco_results(self._image_ids[int(ann_id)], person, self._category_id)
                )
        return results

    def metrics(self, results) -> dict:
        return coco_metrics(self.val_set.annotation_file, results, self.iou_type)

    def validate(self, model, step: int, writer) -> tuple[dict, list]:
        """(metrics, COCO results) of `model` on the val set, also written to `writer`."""
        predict_fn = keras_predict_fn(model)
        results = self.predict(predict_fn)
        metrics = self.metrics(results)
        write_validation(
            writer, step, metrics, self._summary_images(predict_fn), self.config.summary_images
        )
        return metrics, results

    def _summary_images(self, predict_fn):
        """Val crops with the GT skeleton (white) and the predicted one (magenta), 2x enlarged."""
        pictures = []
        for batch in self._val_batches(limit=self.config.summary_images):
            predicted = self._decode(predict_fn, batch["images"])
            for image, gt, pred in zip(batch["images"], batch["keypoints"], predicted):
                picture = draw.draw_keypoints(image, gt, self.val_set.skeleton, color=GT_COLOR)
                picture = draw.draw_keypoints(
                    picture,
                    pred,
                    self.val_set.skeleton,
                    color=PREDICTION_COLOR,
                    threshold=post.SCORE_THRESHOLD,
                )
                pictures.append(np.asarray(picture.resize((picture.width * 2, picture.height * 2))))
        return np.stack(pictures) if pictures else np.zeros((0, 8, 8, 3), np.uint8)
