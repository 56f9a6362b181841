"""The detection task: YOLO model, loss, data and validation, glued for the training loop."""

import dataclasses

import numpy as np

from tfqat.data import draw, pipeline
from tfqat.data.coco import CocoDataset
from tfqat.data.images import decode_image
from tfqat.data.letterbox import letterboxed_batches
from tfqat.models.yolo_spec import OUTPUT_NAMES
from tfqat.postprocess import detection as post
from tfqat.postprocess.metrics import IOU_TYPES, METRIC_NAMES, coco_metrics
from tfqat.tasks.common import input_shard, keras_predict_fn, write_validation


@dataclasses.dataclass
class DetectionConfig:
    input_size: tuple
    model_size: str = "n"
    activation: str = "silu"
    batch_size: int = 16
    augment: bool = True
    mosaic: bool = True
    jitter: tuple = (0.75, 1.25)
    min_box_size: float = 1.0
    memory_cache_mb: int = pipeline.DEFAULT_MEMORY_CACHE_MB
    seed: int = 0
    val_batch_size: int = 32
    summary_images: int = 4


class DetectionTask:
    name = "detection"
    iou_type = IOU_TYPES["detection"]
    primary_metric = METRIC_NAMES[iou_type][0]
    # Outputs the int8 export validator requires to vary (scores, not box distributions).
    score_output_names = tuple(n for n in OUTPUT_NAMES if n.startswith("cls_"))

    def __init__(self, config: DetectionConfig, train: CocoDataset, val: CocoDataset):
        from tfqat.losses.detection import YoloLoss

        self.config = config
        self.train_set = train
        self.val_set = val
        self.num_classes = len(train.category_ids)
        self.loss = YoloLoss(self.num_classes, tuple(config.input_size))

    def build_model(self):
        from tfqat.models.yolo import build_yolo

        c = self.config
        return build_yolo(
            self.num_classes,
            size=c.model_size,
            input_size=tuple(c.input_size),
            activation=c.activation,
        )

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_set.samples) // self.config.batch_size)

    def train_dataset(self, start_epoch: int, input_context=None):
        """The infinite training batches; under tf.distribute, one input pipeline's shard
        (`input_shard`)."""
        c = self.config
        images, batch_size = input_shard(self.train_set, c.batch_size, input_context)
        return pipeline.detection_dataset(
            images,
            c.input_size,
            batch_size,
            training=True,
            seed=c.seed * 1000 + start_epoch,
            augment=c.augment,
            mosaic=c.mosaic,
            jitter=c.jitter,
            min_box_size=c.min_box_size,
            memory_cache_mb=c.memory_cache_mb,
        )

    def preprocessed_images(self, count: int, split: str = "train") -> np.ndarray:
        """The first `count` images of a split, letterboxed as for evaluation: float32 0..255.

        Train images calibrate quantization; val images compare backends.
        """
        dataset = self.train_set if split == "train" else self.val_set
        batches = letterboxed_batches(dataset, self.config.input_size, 16, limit=count)
        return np.concatenate([images for _, images, _ in batches])

    def predict(self, predict_fn):
        return post.detection_results(
            predict_fn, self.val_set, self.config.input_size, batch_size=self.config.val_batch_size
        )

    def metrics(self, results) -> dict:
        return coco_metrics(self.val_set.annotation_file, results, self.iou_type)

    def validate(self, model, step: int, writer) -> tuple[dict, list]:
        """(metrics, COCO results) of `model` on the val set, also written to `writer`."""
        results = self.predict(keras_predict_fn(model))
        metrics = self.metrics(results)
        write_validation(
            writer, step, metrics, self._summary_images(results), self.config.summary_images
        )
        return metrics, results

    def _summary_images(self, results):
        """Val images with ground truth (white) and predictions above 0.3 (class colours)."""
        pictures = []
        for sample in self.val_set.samples[: self.config.summary_images]:
            image = decode_image(sample.path, self.val_set.exif_transpose)
            dets = [r for r in results if r["image_id"] == sample.image_id and r["score"] > 0.3]
            picture = draw.draw_boxes(
                image,
                sample.boxes,
                sample.labels,
                self.val_set.category_names,
                color=(255, 255, 255),
            )
            index = {cid: i for i, cid in enumerate(self.val_set.category_ids)}
            boxes = np.array(
                [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], np.float32
            ).reshape(-1, 4)
            labels = [index[d["category_id"]] for d in dets]
            picture = draw.draw_boxes(
                picture,
                boxes,
                labels,
                self.val_set.category_names,
                scores=[d["score"] for d in dets],
            )
            # One size for all, as TensorBoard stacks them into one tensor.
            pictures.append(np.asarray(picture.resize((256, 256))))
        return np.stack(pictures) if pictures else np.zeros((0, 8, 8, 3), np.uint8)
