import subprocess
import sys

import numpy as np
import pytest

from tfqat.data.letterbox import boxes_to_image, boxes_to_input, letterbox_params
from tfqat.models.yolo_spec import OUTPUT_NAMES
from tfqat.postprocess.detection import decode, nms, postprocess, to_coco_results

REG_MAX = 16


def _outputs(input_size, num_classes, batch=1, box_logit=0.0, cls_logit=-20.0):
    h, w = input_size
    outs = []
    for s in (8, 16, 32):
        outs.append(np.full((batch, h // s, w // s, 4 * REG_MAX), box_logit, np.float32))
        outs.append(np.full((batch, h // s, w // s, num_classes), cls_logit, np.float32))
    return outs


def _put_box(outs, level, row, col, bins, cls=None, cls_logit=1000.0, image=0):
    """All DFL mass on `bins` (left, top, right, bottom) at one cell, class `cls` logit."""
    box = outs[2 * level][image, row, col]
    box[:] = -1000.0
    for side, b in enumerate(bins):
        box[side * REG_MAX + b] = 1000.0
    if cls is not None:
        outs[2 * level + 1][image, row, col, cls] = cls_logit


def test_decode_hand_computed():
    outs = _outputs((64, 64), 2)
    # P4 cell (row 1, col 2): centre (40, 24); bins (2, 1, 3, 0) * 16 -> [8, 8, 88, 24].
    _put_box(outs, level=1, row=1, col=2, bins=(2, 1, 3, 0), cls=1)
    boxes, scores = decode(outs, (64, 64))
    assert boxes.shape == (1, 84, 4) and scores.shape == (1, 84, 2)
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    anchor = 64 + 1 * 4 + 2
    np.testing.assert_allclose(boxes[0, anchor], [8, 8, 88, 24], atol=1e-4)
    np.testing.assert_allclose(scores[0, anchor], [0, 1], atol=1e-6)
    # Uniform logits: expected distance 7.5 bins. P3 cell (0, 0), centre (4, 4), stride 8.
    np.testing.assert_allclose(boxes[0, 0], [4 - 60, 4 - 60, 4 + 60, 4 + 60], atol=1e-3)
    np.testing.assert_allclose(scores[0, 0], 1 / (1 + np.exp(20)), rtol=1e-5)


def test_decode_accepts_dicts_prefixed_names_and_batches():
    outs = _outputs((64, 96), 3, batch=2, box_logit=0.5)
    _put_box(outs, level=2, row=1, col=2, bins=(0, 1, 2, 3), image=1)
    expected_boxes, expected_scores = decode(outs, (64, 96))
    assert expected_boxes.shape == (2, 8 * 12 + 4 * 6 + 2 * 3, 4)
    np.testing.assert_allclose(expected_boxes[1, -1], [80, 16, 80 + 64, 48 + 96], atol=1e-4)
    as_dict = {f"quant_{n}": o for n, o in zip(OUTPUT_NAMES, outs)}
    boxes, scores = decode(dict(reversed(as_dict.items())), (64, 96))
    np.testing.assert_array_equal(boxes, expected_boxes)
    np.testing.assert_array_equal(scores, expected_scores)
    boxes, _ = decode([o[1] for o in outs], (64, 96))  # no batch dimension
    np.testing.assert_array_equal(boxes[0], expected_boxes[1])


def test_decode_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="stride 8"):
        decode(_outputs((64, 64), 2), (128, 128))
    with pytest.raises(ValueError, match="box_p3"):
        decode({"cls_p3": 0}, (64, 64))


def test_nms_same_class_keeps_one_different_classes_keep_both():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9, 0], [0.8, 0], [0.7, 0]], np.float32)
    kept, kept_scores, labels = nms(boxes, scores, iou_threshold=0.5)
    np.testing.assert_array_equal(kept, boxes[[0, 2]])
    np.testing.assert_allclose(kept_scores, [0.9, 0.7])
    np.testing.assert_array_equal(labels, [0, 0])

    scores = np.array([[0.9, 0], [0, 0.8], [0, 0]], np.float32)
    kept, kept_scores, labels = nms(boxes, scores, iou_threshold=0.5)
    np.testing.assert_array_equal(kept, boxes[[0, 1]])
    np.testing.assert_array_equal(labels, [0, 1])
    kept, _, labels = nms(boxes, scores, iou_threshold=0.5, class_agnostic=True)
    np.testing.assert_array_equal(labels, [0])


def test_nms_thresholds_and_limits():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores = np.array([[0.5], [0.05], [0.9]], np.float32)
    kept, kept_scores, _ = nms(boxes, scores, score_threshold=0.1)
    np.testing.assert_array_equal(kept, boxes[[2, 0]])
    kept, _, _ = nms(boxes, scores, max_detections=1)
    np.testing.assert_array_equal(kept, boxes[[2]])
    kept, kept_scores, labels = nms(boxes, np.zeros_like(scores))
    assert kept.shape == (0, 4) and kept_scores.shape == (0,) and labels.shape == (0,)


def test_nms_on_a_dense_image_keeps_the_best_max_detections():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 256, (1344, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 64, (1344, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, (1344, 80)).astype(np.float32)
    kept, kept_scores, labels = nms(boxes, scores)
    assert len(kept) == 300 and set(labels) <= set(range(80))
    assert np.all(np.diff(kept_scores) <= 0)
    # Per class, no two kept boxes overlap beyond the threshold.
    for c in set(labels.tolist()):
        b = kept[labels == c]
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
                h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
                union = (
                    (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
                    + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
                    - w * h
                )
                assert w * h / union <= 0.7


def test_letterbox_round_trip_through_postprocess():
    # A 32x64 (h, w) image letterboxed into 64x64: scale 1, top 16, left 0.
    lb = letterbox_params(32, 64, 64, 64)
    assert (lb.top, lb.left, lb.scale_x, lb.scale_y) == (16, 0, 1.0, 1.0)
    outs = _outputs((64, 64), 3)
    # P3 cell (3, 3): centre (28, 28); bins (1, 1, 2, 1) * 8 -> input [20, 20, 44, 36].
    _put_box(outs, level=0, row=3, col=3, bins=(1, 1, 2, 1), cls=2)
    # P3 cell (2, 7): centre (60, 20), bins (1, 1, 1, 1) -> input [52, 12, 68, 28]: clipped.
    _put_box(outs, level=0, row=2, col=7, bins=(1, 1, 1, 1), cls=0, cls_logit=3.0)
    [(boxes, scores, labels)] = postprocess(outs, (64, 64), [lb], [(32, 64)])
    np.testing.assert_array_equal(labels, [2, 0])
    np.testing.assert_allclose(boxes[0], [20, 4, 44, 20], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [52, 0, 64, 12], atol=1e-2)
    assert scores[0] > 0.999

    lb = letterbox_params(480, 640, 256, 256)
    image_boxes = np.array([[10.5, 20.25, 300, 479], [0, 0, 640, 480]], np.float32)
    round_trip = boxes_to_image(boxes_to_input(image_boxes, lb), lb)
    np.testing.assert_allclose(round_trip, image_boxes, atol=1e-3)


@pytest.mark.parametrize("score_threshold", [0.001, 0.25, 0.9])
def test_postprocess_decodes_only_candidates_with_the_same_result(score_threshold):
    """postprocess() decodes the boxes of anchors that can pass the threshold only; its result
    equals decode() of every anchor followed by nms()."""
    rng = np.random.default_rng(0)
    outs = [rng.normal(0, 3, o.shape).astype(np.float32) for o in _outputs((128, 96), 5, 2)]
    lbs = [letterbox_params(128, 96, 128, 96)] * 2
    got = postprocess(outs, (128, 96), lbs, [(128, 96)] * 2, score_threshold=score_threshold)
    boxes, scores = decode(outs, (128, 96))
    for image, (kept_boxes, kept_scores, labels) in enumerate(got):
        want = nms(boxes[image], scores[image], score_threshold=score_threshold)
        assert len(kept_scores) == len(want[1]) > 0
        np.testing.assert_allclose(kept_boxes, np.clip(want[0], 0, [96, 128, 96, 128]), atol=1e-3)
        np.testing.assert_array_equal(kept_scores, want[1])
        np.testing.assert_array_equal(labels, want[2])


def test_to_coco_results():
    results = to_coco_results(
        np.int64(7),
        np.array([[10.123, 20.5, 30.0, 60.257]]),
        np.array([0.87654321], np.float32),
        np.array([1]),
        category_ids=[1, 3, 5],
    )
    assert results == [
        {"image_id": 7, "category_id": 3, "bbox": [10.12, 20.5, 19.88, 39.76], "score": 0.87654}
    ]
    assert type(results[0]["image_id"]) is int and type(results[0]["score"]) is float


def test_postprocess_imports_without_tensorflow():
    code = "\n".join(
        [
            "import sys; sys.modules['tensorflow'] = None",
            "import numpy as np",
            "from tfqat.postprocess.detection import decode, postprocess",
            "outs = [np.zeros((1, 64 // s, 64 // s, c), np.float32)",
            "        for s in (8, 16, 32) for c in (64, 2)]",
            "boxes, scores = decode(outs, (64, 64))",
            "assert boxes.shape == (1, 84, 4)",
            "heavy = ('tf_keras', 'keras', 'keras_cv', 'tensorflow_model_optimization')",
            "assert not [m for m in heavy if m in sys.modules]",
        ]
    )

    def run(source):
        return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)

    result = run(code)
    assert result.returncode == 0, result.stderr
    # The block works: a module that needs TensorFlow fails under it.
    blocked = run("import sys; sys.modules['tensorflow'] = None; import tfqat.tf_compat")
    assert blocked.returncode != 0 and "tensorflow" in blocked.stderr
