"""The decode + NMS tail of the Android detector file, converted by TensorFlow's TFLite converter.

Inputs: the six YOLO head tensors (float32, named as the int8 file's outputs). Ops: DFL softmax
and its expectation (FULLY_CONNECTED with the bin indices), centre-size box encodings
(`tfqat.postprocess.center_size`), sigmoid scores, then the custom op
TFLite_Detection_PostProcess with constant anchors. Outputs: boxes [1, N, 4] (ymin, xmin, ymax,
xmax relative to the model input), classes [1, N], scores [1, N] and the count [1].

Per-class NMS, as our evaluation does it, without the op's "regular" NMS: that path, since TF
2.8 and still in LiteRT 2.3, runs classes on several threads and skips class `num_threads`
whenever the interpreter has more than one thread (tensorflow/tensorflow#56058; measured here:
class 2 missing at 2 threads, class 3 at 3, class 4 at 4). Instead every (class, anchor) pair
is a row of its own, its score zero for the other classes, its anchor moved down by
class x `class_offset` so that boxes of different classes never overlap; the op's
single-threaded class-agnostic ("fast") NMS then suppresses within classes only, and one SUB
after the op moves the kept boxes back. The boxes are then clipped to the input, [0, 1].

The op comes from the converter's fusion of a `tf.function` marked
`experimental_implements="TFLite_Detection_PostProcess"` (as TF's Object Detection API exports
SSD models). The fusion happens only on the SavedModel path: `from_concrete_functions` inlines
the empty function and folds its outputs to constants. The converter drops some attributes
(`detections_per_class`), so the op's options are written again afterwards.
"""

import dataclasses
import os
import tempfile

import numpy as np
from flatbuffers import flexbuffers

from tfqat.export import metadata as metadata_lib
from tfqat.export.tflite.flatbuffer import model_object, pack, schema
from tfqat.export.tflite.stitch import set_outputs
from tfqat.models.yolo_spec import LEVELS, STRIDES, check_input_size
from tfqat.postprocess.center_size import MIN_SIZE, center_size_anchors, class_anchors, class_offset
from tfqat.tf_compat import tf

__all__ = ["DETECTION_OUTPUT_NAMES", "POSTPROCESS_OP", "InGraphNms", "convert_tail"]

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# Names of the four outputs (the op's, boxes moved back and clipped), in the op's order.
DETECTION_OUTPUT_NAMES = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)


@dataclasses.dataclass(frozen=True)
class InGraphNms:
    """What the in-graph NMS keeps. The defaults are tfqat's COCO evaluation's: per-class NMS
    at IoU 0.7 of every (anchor, class) score >= 0.001, the best 300 detections in all."""

    max_detections: int = metadata_lib.DETECTION_MAX_DETECTIONS
    score_threshold: float = metadata_lib.DETECTION_EVAL_SCORE_THRESHOLD
    iou_threshold: float = metadata_lib.DETECTION_IOU_THRESHOLD
    per_class: bool = True

    def attributes(self, num_classes: int) -> dict:
        """The op's options (flexbuffer map), as the kernel reads them. Always the op's
        single-threaded "fast" NMS: per-class NMS comes from class rows (see _class_rows)."""
        return {
            "max_detections": self.max_detections,
            "max_classes_per_detection": 1,
            "detections_per_class": self.max_detections,
            "use_regular_nms": False,
            "nms_score_threshold": self.score_threshold,
            "nms_iou_threshold": self.iou_threshold,
            "num_classes": num_classes,
            "y_scale": 1.0,
            "x_scale": 1.0,
            "h_scale": 1.0,
            "w_scale": 1.0,
        }

    def output_shapes(self):
        n = self.max_detections
        return [[1, n, 4], [1, n], [1, n], [1]]


def _implements_signature(attributes: dict) -> str:
    """The NameAttrList text `experimental_implements` takes (as TF's Object Detection API)."""
    kinds = {bool: "b", int: "i", float: "f"}
    parts = [f'name: "{POSTPROCESS_OP}"']
    for key, value in attributes.items():
        text = str(value).lower() if isinstance(value, bool) else value
        parts.append(f'attr {{ key: "{key}" value {{ {kinds[type(value)]}: {text} }} }}')
    return " ".join(parts)


def _postprocess_function(attributes: dict):
    count = attributes["max_detections"]

    @tf.function(experimental_implements=_implements_signature(attributes))
    def postprocess(box_encodings, class_predictions, anchors):
        # The body the converter swaps for TFLite_Detection_PostProcess (experimental_implements).
        # Its outputs depend on the inputs, so nothing downstream is constant-folded first.
        depends = (
            tf.reduce_sum(box_encodings) + tf.reduce_sum(class_predictions) + tf.reduce_sum(anchors)
        ) * 0.0
        scores = tf.zeros([1, count]) + depends
        return tf.zeros([1, count, 4]) + depends, scores, scores, tf.zeros([1]) + depends

    return postprocess


def _head_specs(input_size, num_classes, reg_max, strides):
    height, width = input_size
    specs = []
    for level, stride in zip(LEVELS, strides):
        grid = [1, height // stride, width // stride]
        specs += [
            tf.TensorSpec([*grid, 4 * reg_max], tf.float32, name=f"box_{level}"),
            tf.TensorSpec([*grid, num_classes], tf.float32, name=f"cls_{level}"),
        ]
    return specs


def _encodings(box_logits, reg_max):
    """DFL logits [1, A, 4, R] -> centre-size encodings [1, A, 4] (see center_size)."""
    bins = tf.reshape(tf.range(reg_max, dtype=tf.float32), [reg_max, 1])
    distances = tf.squeeze(tf.matmul(tf.nn.softmax(box_logits, axis=-1), bins), -1)
    left, top, right, bottom = tf.unstack(distances, axis=-1)
    return tf.stack(
        [
            (bottom - top) * 0.5,
            (right - left) * 0.5,
            tf.math.log(tf.maximum(top + bottom, MIN_SIZE)),
            tf.math.log(tf.maximum(left + right, MIN_SIZE)),
        ],
        axis=-1,
    )


def _class_rows(encodings, scores, num_classes):
    """One row per (class, anchor), class-major: the anchor's encodings, and a score vector
    that is zero but for that class's score. The op's class-agnostic NMS then compares a box
    only with boxes of its own class (their anchors sit `class_offset` apart per class)."""
    rows = tf.tile(encodings, [1, num_classes, 1])
    per_class = tf.transpose(scores, [0, 2, 1])[..., None]  # [1, C, A, 1]
    masked = per_class * tf.eye(num_classes)[None, :, None, :]  # [1, C, A, C]
    return rows, tf.reshape(masked, [1, -1, num_classes])


def _tail_function(input_size, num_classes, reg_max, strides, nms: InGraphNms):
    anchors = center_size_anchors(input_size, strides)
    offset = class_offset(input_size, reg_max, strides) if nms.per_class else 0.0
    if nms.per_class:
        anchors = class_anchors(anchors, num_classes, offset)
    postprocess = _postprocess_function(nms.attributes(num_classes))
    unshift = tf.constant([offset, 0.0, offset, 0.0])

    @tf.function(input_signature=_head_specs(input_size, num_classes, reg_max, strides))
    def tail(*heads):
        box = tf.concat([tf.reshape(b, [1, -1, 4, reg_max]) for b in heads[0::2]], axis=1)
        cls = tf.concat([tf.reshape(c, [1, -1, num_classes]) for c in heads[1::2]], axis=1)
        encodings, scores = _encodings(box, reg_max), tf.sigmoid(cls)
        if nms.per_class:
            encodings, scores = _class_rows(encodings, scores, num_classes)
        boxes, classes, kept_scores, count = postprocess(encodings, scores, tf.constant(anchors))
        if nms.per_class:
            boxes = boxes - classes[..., None] * unshift
        # Inside the input, as our evaluation clips them (and MediaPipe would shift, not clip,
        # a box that starts left of or above the image).
        return tf.clip_by_value(boxes, 0.0, 1.0), classes, kept_scores, count

    return tail


def _convert_saved_model(function, representative_heads=None) -> bytes:
    module = tf.Module()
    module.tail = function
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tail")
        tf.saved_model.save(module, path, signatures=function.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_saved_model(path)
        converter.allow_custom_ops = True
        if representative_heads is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _signature_samples(function, representative_heads)
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
        return converter.convert()


def _signature_samples(function, representative_heads):
    names = [spec.name for spec in function.input_signature]

    def samples():
        for heads in representative_heads:
            yield dict(zip(names, (np.asarray(h, np.float32)[None] for h in heads)))

    return samples


def _finish(data: bytes, nms: InGraphNms, num_classes: int) -> bytes:
    """Writes the op's full options; makes the tail function's four results the outputs, in
    its order (the converter sorts them by name), named and with static shapes."""
    model = model_object(data)
    graph = model.subgraphs[0]
    ops = [
        op
        for op in graph.operators
        if model.operatorCodes[op.opcodeIndex].customCode == POSTPROCESS_OP.encode()
    ]
    if len(ops) != 1:
        raise RuntimeError(
            f"the converter did not fuse one {POSTPROCESS_OP} op "
            f"(found {len(ops)}): no in-graph NMS"
        )
    ops[0].customOptions = np.frombuffer(flexbuffers.Dumps(nms.attributes(num_classes)), np.uint8)
    ops[0].customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    (signature,) = model.signatureDefs
    by_key = {
        t.name.decode() if isinstance(t.name, bytes) else t.name: int(t.tensorIndex)
        for t in signature.outputs
    }
    outputs = [by_key[f"output_{i}"] for i in range(len(DETECTION_OUTPUT_NAMES))]
    return set_outputs(pack(model), outputs, DETECTION_OUTPUT_NAMES, nms.output_shapes())


def convert_tail(
    input_size,
    num_classes: int,
    reg_max: int = 16,
    nms: InGraphNms | None = None,
    strides=STRIDES,
    representative_heads=None,
) -> bytes:
    """The tail .tflite: float32 head tensors in, TFLite_Detection_PostProcess's outputs out.

    With `representative_heads` (an iterable of lists of the six float head arrays, one image
    each, without batch dimension) the converter quantizes what it can of the tail to int8: the
    int8-decode variant, kept to measure it. Not for deployment: the converter quantizes the
    anchors and the boxes too, which ruins them (mAP50-95 0.0007 against 0.0797, README).
    """
    input_size = check_input_size(input_size)
    nms = nms or InGraphNms()
    function = _tail_function(input_size, num_classes, reg_max, tuple(strides), nms)
    return _finish(_convert_saved_model(function, representative_heads), nms, num_classes)
