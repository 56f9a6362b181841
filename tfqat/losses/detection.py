"""YOLOv8 detection loss in TensorFlow: task-aligned assignment, CIoU, DFL and BCE.

Follows Ultralytics' `v8DetectionLoss` and `TaskAlignedAssigner`. keras-cv 0.9's
`YOLOV8LabelEncoder` is not used: it returns a foreground mask that is always all ones (it tests
`argmax(...) > -1`), it raises un-clamped CIoU to the power beta (a negative CIoU then scores like
a positive one), and it drops matched anchors whose CIoU is negative. The assigner below is a
direct, static-shape port of Ultralytics' instead; CIoU comes from keras-cv.
"""

import keras_cv

from tfqat.losses.common import binary_entropy, global_batch_sum
from tfqat.models.yolo_spec import STRIDES, check_input_size
from tfqat.models.yolo_spec import make_anchors as make_anchors_np
from tfqat.tf_compat import tf

__all__ = ["YoloLoss", "make_anchors", "assign_targets"]

_EPS = 1e-9


def make_anchors(input_size, strides=STRIDES):
    """TF constants for `yolo_spec.make_anchors`: points [A, 2] (x, y) pixels, strides [A]."""
    points, anchor_strides = make_anchors_np(input_size, strides)
    return tf.constant(points), tf.constant(anchor_strides)


def flatten_outputs(outputs, reg_max, num_classes):
    """The model's six head tensors -> box logits [B, A, 4, reg_max], class logits [B, A, C]."""
    if len(outputs) != 2 * len(STRIDES):
        raise ValueError(f"expected {2 * len(STRIDES)} head tensors, got {len(outputs)}")
    box, cls = [], []
    for box_level, cls_level in zip(outputs[0::2], outputs[1::2]):
        cells = box_level.shape[1] * box_level.shape[2]  # static, so A is known when tracing
        box.append(tf.reshape(tf.cast(box_level, tf.float32), [-1, cells, 4, reg_max]))
        cls.append(tf.reshape(tf.cast(cls_level, tf.float32), [-1, cells, num_classes]))
    return tf.concat(box, axis=1), tf.concat(cls, axis=1)


def dfl_expectation(box_logits):
    """[..., 4, reg_max] DFL logits -> [..., 4] expected distances in bins (stride units)."""
    reg_max = box_logits.shape[-1]
    bins = tf.range(reg_max, dtype=box_logits.dtype)
    return tf.reduce_sum(tf.nn.softmax(box_logits, axis=-1) * bins, axis=-1)


def dist2bbox(distances, points):
    """(left, top, right, bottom) distances from points [A, 2] -> xyxy boxes."""
    return tf.concat([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def bbox2dist(points, boxes, max_dist):
    """xyxy boxes -> (left, top, right, bottom) distances from points, clipped to [0, max_dist]."""
    dist = tf.concat([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
    return tf.clip_by_value(dist, 0.0, max_dist)


def ciou(boxes1, boxes2):
    """Complete IoU of broadcastable xyxy boxes [..., 4] -> [...]."""
    return keras_cv.bounding_box.compute_ciou(boxes1, boxes2, bounding_box_format="xyxy")


def compact_targets(boxes, classes):
    """Moves valid boxes (class >= 0) first and drops the all-padding tail.

    The assigner's work is B x M x anchors; batches are padded to a large M but hold few boxes.
    At least one slot is kept, so an all-padding batch still has static rank and valid shapes.
    """
    classes = tf.cast(classes, tf.int32)
    valid = tf.cast(classes >= 0, tf.int32)
    order = tf.argsort(valid, axis=1, direction="DESCENDING", stable=True)
    count = tf.maximum(tf.reduce_max(tf.reduce_sum(valid, axis=1)), 1)
    boxes = tf.gather(tf.cast(boxes, tf.float32), order, batch_dims=1)[:, :count]
    classes = tf.gather(classes, order, batch_dims=1)[:, :count]
    return boxes, classes, classes >= 0


def assign_targets(
    pred_scores, pred_boxes, points, gt_classes, gt_boxes, gt_mask, topk=10, alpha=0.5, beta=6.0
):
    """Task-aligned assignment (TOOD), as Ultralytics' TaskAlignedAssigner.

    Args:
      pred_scores: [B, A, C] class probabilities (after sigmoid).
      pred_boxes: [B, A, 4] predicted xyxy boxes, input pixels.
      points: [A, 2] anchor centres (x, y), input pixels.
      gt_classes: [B, M] int32 class indices (anything for padding).
      gt_boxes: [B, M, 4] xyxy, input pixels.
      gt_mask: [B, M] bool, True for real boxes.

    Returns:
      target_boxes [B, A, 4] (input pixels; zeros where not foreground), target_scores [B, A, C]
      (one-hot of the class times the normalised alignment metric), fg_mask [B, A] bool and
      target_gt_index [B, A] int32.
    """
    num_anchors = points.shape[0]
    num_classes = pred_scores.shape[-1]
    gt_count = tf.shape(gt_boxes)[1]

    # Anchors whose centre lies strictly inside a real GT box: [B, M, A].
    deltas = tf.concat(
        [points - gt_boxes[:, :, None, :2], gt_boxes[:, :, None, 2:] - points], axis=-1
    )
    candidates = (tf.reduce_min(deltas, axis=-1) > _EPS) & gt_mask[:, :, None]

    # Alignment metric score^alpha * CIoU^beta on the candidates: [B, M, A].
    scores_per_class = tf.transpose(pred_scores, [0, 2, 1])  # [B, C, A]
    class_index = tf.clip_by_value(gt_classes, 0, num_classes - 1)
    gt_scores = tf.gather(scores_per_class, class_index, batch_dims=1)  # [B, M, A]
    overlaps = tf.maximum(ciou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]), 0.0)
    overlaps = tf.where(candidates, overlaps, 0.0)
    align = tf.where(candidates, tf.pow(gt_scores, alpha) * tf.pow(overlaps, beta), 0.0)

    # Top-k anchors per GT box. Non-candidates rank below every candidate, so a box with fewer
    # than k candidates gets all of them (Ultralytics leaves that to top-k's tie order).
    _, topk_index = tf.math.top_k(tf.where(candidates, align, -1.0), k=min(topk, num_anchors))
    batch = tf.shape(gt_boxes)[0]
    b_index, m_index = tf.meshgrid(tf.range(batch), tf.range(gt_count), indexing="ij")
    k = tf.shape(topk_index)[-1]
    scatter_index = tf.stack(
        [
            tf.tile(b_index[..., None], [1, 1, k]),
            tf.tile(m_index[..., None], [1, 1, k]),
            topk_index,
        ],
        axis=-1,
    )
    in_topk = tf.scatter_nd(
        scatter_index, tf.ones_like(topk_index, tf.float32), [batch, gt_count, num_anchors]
    )
    mask_pos = in_topk * tf.cast(candidates, tf.float32)

    # An anchor picked by several GT boxes keeps only the one it overlaps most.
    multiple = tf.reduce_sum(mask_pos, axis=1, keepdims=True) > 1.0  # [B, 1, A]
    best_gt = tf.one_hot(tf.argmax(overlaps, axis=1), gt_count, axis=1)  # [B, M, A]
    mask_pos = tf.where(multiple, best_gt, mask_pos)
    fg_mask = tf.reduce_sum(mask_pos, axis=1) > 0.0  # [B, A]
    target_gt_index = tf.argmax(mask_pos, axis=1, output_type=tf.int32)  # [B, A]

    target_classes = tf.gather(class_index, target_gt_index, batch_dims=1)
    target_boxes = tf.gather(gt_boxes, target_gt_index, batch_dims=1)
    target_boxes = tf.where(fg_mask[..., None], target_boxes, 0.0)
    fg_float = tf.cast(fg_mask, tf.float32)
    target_scores = tf.one_hot(target_classes, num_classes) * fg_float[..., None]

    # Soft class targets: each GT's best positive gets its best IoU, the others proportionally.
    align = align * mask_pos
    max_align = tf.reduce_max(align, axis=-1, keepdims=True)
    max_overlap = tf.reduce_max(overlaps * mask_pos, axis=-1, keepdims=True)
    norm_align = tf.reduce_max(align * max_overlap / (max_align + _EPS), axis=1)  # [B, A]
    target_scores = target_scores * norm_align[..., None]
    return (
        tf.stop_gradient(target_boxes),
        tf.stop_gradient(target_scores),
        tf.stop_gradient(fg_mask),
        tf.stop_gradient(target_gt_index),
    )


def distribution_focal_loss(box_logits, target_dist):
    """Cross-entropy to the two bins around each target distance, weighted by closeness.

    box_logits: [..., 4, reg_max]; target_dist: [..., 4] in bins, within [0, reg_max - 1).
    Returns [...] (mean over the four sides).
    """
    reg_max = box_logits.shape[-1]
    left = tf.floor(target_dist)
    weight_left = left + 1.0 - target_dist
    left_index = tf.cast(left, tf.int32)
    labels = tf.one_hot(left_index, reg_max) * weight_left[..., None] + tf.one_hot(
        left_index + 1, reg_max
    ) * (1.0 - weight_left[..., None])
    loss = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=box_logits)
    return tf.reduce_mean(loss, axis=-1)


class YoloLoss:
    """YOLOv8 loss over the six raw head tensors of `tfqat.models.yolo.build_yolo`.

    Call as `loss(targets, outputs)` with targets {"boxes": [B, M, 4] xyxy input pixels,
    "classes": [B, M] class index, -1 for padding}. Returns a dict of scalars box, cls, dfl
    (already weighted) and total = their sum. Each is normalised by the sum of the target
    scores over the batch, as in Ultralytics (which then multiplies its total by the batch size
    for PyTorch; we do not).
    """

    def __init__(
        self,
        num_classes,
        input_size,
        reg_max=16,
        strides=STRIDES,
        box_weight=7.5,
        cls_weight=0.5,
        dfl_weight=1.5,
        topk=10,
        alpha=0.5,
        beta=6.0,
    ):
        self.num_classes = num_classes
        self.input_size = check_input_size(input_size)
        self.reg_max = reg_max
        self.strides = tuple(strides)
        self.box_weight = box_weight
        self.cls_weight = cls_weight
        self.dfl_weight = dfl_weight
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.points, self.anchor_strides = make_anchors(self.input_size, self.strides)

    def __call__(self, targets, outputs):
        box_logits, cls_logits = flatten_outputs(outputs, self.reg_max, self.num_classes)
        if box_logits.shape[1] != self.points.shape[0]:
            raise ValueError(
                f"outputs hold {box_logits.shape[1]} anchors, but input_size {self.input_size} "
                f"gives {self.points.shape[0]}"
            )
        strides = self.anchor_strides[:, None]
        grid_points = self.points / strides  # anchor centres in stride units
        pred_dist = dfl_expectation(box_logits)  # [B, A, 4], stride units
        pred_boxes = dist2bbox(pred_dist, grid_points)  # stride units

        gt_boxes, gt_classes, gt_mask = compact_targets(targets["boxes"], targets["classes"])
        target_boxes, target_scores, fg_mask, _ = assign_targets(
            tf.stop_gradient(tf.sigmoid(cls_logits)),
            tf.stop_gradient(pred_boxes * strides),
            self.points,
            gt_classes,
            gt_boxes,
            gt_mask,
            topk=self.topk,
            alpha=self.alpha,
            beta=self.beta,
        )
        target_scores_sum = tf.maximum(global_batch_sum(tf.reduce_sum(target_scores)), 1.0)

        cls_loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=target_scores, logits=cls_logits)
        cls_loss = tf.reduce_sum(cls_loss) / target_scores_sum

        # Box losses only on foreground anchors, weighted by their target score. Background
        # anchors get a dummy one-stride box so no NaN can reach the (zero-weighted) gradient.
        weight = tf.reduce_sum(target_scores, axis=-1) * tf.cast(fg_mask, tf.float32)  # [B, A]
        dummy = tf.concat([grid_points - 0.5, grid_points + 0.5], axis=-1)
        target_grid = tf.where(fg_mask[..., None], target_boxes / strides, dummy)
        box_loss = tf.reduce_sum((1.0 - ciou(pred_boxes, target_grid)) * weight) / target_scores_sum
        target_dist = bbox2dist(grid_points, target_grid, self.reg_max - 1 - 0.01)
        dfl_loss = distribution_focal_loss(box_logits, target_dist)
        dfl_loss = tf.reduce_sum(dfl_loss * weight) / target_scores_sum

        losses = {
            "box": self.box_weight * box_loss,
            "cls": self.cls_weight * cls_loss,
            "dfl": self.dfl_weight * dfl_loss,
        }
        losses["total"] = losses["box"] + losses["cls"] + losses["dfl"]
        return losses

    def distillation(self, outputs, teacher_outputs):
        """How far `outputs` are from a teacher's on the same images (QAT's output distillation).

        Binary cross-entropy to the teacher's class probabilities over every anchor, and
        cross-entropy to its DFL bin distributions weighted per anchor by the teacher's top
        class probability (background anchors' boxes are never used), each minus the teacher's
        own entropy, so the loss is 0 when the outputs match. Normalised by the global batch's
        sum of those anchor weights (as the task loss by its target scores) and weighted like the
        cls and dfl terms, so a weight of 1 makes it comparable to the task loss.
        """
        box_logits, cls_logits = flatten_outputs(outputs, self.reg_max, self.num_classes)
        teacher_box, teacher_cls = flatten_outputs(teacher_outputs, self.reg_max, self.num_classes)
        teacher_scores = tf.stop_gradient(tf.sigmoid(teacher_cls))
        teacher_bins = tf.stop_gradient(tf.nn.softmax(teacher_box, axis=-1))
        anchor_weight = tf.reduce_max(teacher_scores, axis=-1)  # [B, A]
        normalizer = tf.maximum(global_batch_sum(tf.reduce_sum(anchor_weight)), 1.0)
        cls = tf.nn.sigmoid_cross_entropy_with_logits(labels=teacher_scores, logits=cls_logits)
        cls -= binary_entropy(teacher_scores)
        bins = tf.nn.softmax_cross_entropy_with_logits(labels=teacher_bins, logits=box_logits)
        bins += tf.reduce_sum(tf.math.xlogy(teacher_bins, teacher_bins), axis=-1)
        bins = tf.reduce_mean(bins, axis=-1) * anchor_weight
        return (
            self.cls_weight * tf.reduce_sum(cls) + self.dfl_weight * tf.reduce_sum(bins)
        ) / normalizer
