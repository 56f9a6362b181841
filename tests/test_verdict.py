"""The report's verdict (QAT vs PTQ): the decision's cases, and the bootstrap's metric equal to
pycocotools' own. No TensorFlow."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfqat.evaluate import report as report_lib
from tfqat.evaluate.verdict import (
    PTQ_SUFFICES,
    QAT_WORSE,
    SHIP_QAT,
    compute_verdict,
    decide,
    verdict_line,
)
from tfqat.postprocess import metrics

NOISE = {"qat_minus_ptq": 0.002, "ptq_drop": 0.002, "qat_drop": 0.002}

# === decide ===


def test_qat_ahead_beyond_noise_ships_the_qat_file():
    verdict = decide("mAP50_95", {"float": 0.40, "qat": 0.398, "ptq": 0.39}, NOISE)
    assert verdict["recommendation"] == SHIP_QAT
    assert verdict["recovered"] == pytest.approx(0.8)
    assert verdict["qat_ratio"] == pytest.approx(0.995)
    assert verdict["ptq_ratio"] == pytest.approx(0.975)
    line = verdict_line(verdict)
    assert "QAT int8 0.995x float, PTQ int8 0.975x float; float - QAT +0.0020 ± 0.0020" in line
    assert verdict["qat_drop"] == pytest.approx(0.002)
    assert "QAT recovered 80% of PTQ's drop" in line and line.endswith(f"{SHIP_QAT}.")


def test_a_gap_within_noise_means_ptq_suffices():
    verdict = decide("AP", {"float": 0.40, "qat": 0.391, "ptq": 0.39}, NOISE)
    assert verdict["recommendation"] == PTQ_SUFFICES
    assert verdict["recovered"] == pytest.approx(0.1)  # PTQ did drop: the share is stated


def test_qat_behind_beyond_noise_ships_the_ptq_file():
    verdict = decide("AP", {"float": 0.40, "qat": 0.38, "ptq": 0.39}, NOISE)
    assert verdict["recommendation"] == QAT_WORSE
    assert verdict["recovered"] == pytest.approx(-1.0)


@pytest.mark.parametrize("ptq", [0.399, 0.40, 0.41])
def test_no_drop_beyond_noise_leaves_nothing_to_recover(ptq):
    verdict = decide("AP", {"float": 0.40, "qat": ptq + 0.001, "ptq": ptq}, NOISE)
    assert verdict["recovered"] is None and verdict["recommendation"] == PTQ_SUFFICES
    assert "PTQ did not drop beyond noise" in verdict_line(verdict)


def test_qat_beyond_noise_ships_even_when_ptq_did_not_drop():
    verdict = decide("AP", {"float": 0.40, "qat": 0.405, "ptq": 0.40}, NOISE)
    assert verdict["recovered"] is None and verdict["recommendation"] == SHIP_QAT


def test_a_pqat_run_says_the_ptq_file_is_not_pruned():
    verdict = decide("AP", {"float": 0.40, "qat": 0.39, "ptq": 0.39}, NOISE, pruned=True)
    assert (
        verdict["recommendation"].startswith(PTQ_SUFFICES)
        and "not pruned" in (verdict["recommendation"])
    )
    ahead = decide("AP", {"float": 0.40, "qat": 0.40, "ptq": 0.39}, NOISE, pruned=True)
    assert ahead["recommendation"] == SHIP_QAT


# === the bootstrap's metric is pycocotools' ===


def _val_set(tmp_path, iou_type, images=24, seed=0):
    """A COCO val file and two prediction lists (a good and a worse model) on it."""
    rs = np.random.RandomState(seed)
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "other"}]
    if iou_type == "keypoints":
        categories = categories[:1]
        categories[0]["keypoints"] = [f"k{i}" for i in range(17)]
    annotations, records = [], []
    for image in range(1, images + 1):
        records.append({"id": image, "file_name": f"{image}.png", "width": 200, "height": 200})
        for _ in range(rs.randint(0, 4)):
            x, y, w, h = rs.uniform(0, 120, 2).tolist() + rs.uniform(10, 70, 2).tolist()
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image,
                "category_id": int(rs.choice([c["id"] for c in categories])),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if iou_type == "keypoints":
                points = np.stack([rs.uniform(x, x + w, 17), rs.uniform(y, y + h, 17)], 1)
                annotation["keypoints"] = np.concatenate([points, np.full((17, 1), 2)], 1)
                annotation["keypoints"] = annotation["keypoints"].ravel().tolist()
                annotation["num_keypoints"] = 17
            annotations.append(annotation)
    path = tmp_path / f"{iou_type}.json"
    data = {"images": records, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))

    def predictions(jitter):
        found = []
        for a in annotations:
            for _ in range(2):  # a near duplicate too: equal-ish scores, matched or not
                found.append(
                    {
                        "image_id": a["image_id"],
                        "category_id": a["category_id"],
                        "bbox": (np.array(a["bbox"]) + rs.normal(0, jitter, 4)).tolist(),
                        "score": float(np.round(rs.uniform(0.2, 1.0), 1)),
                    }
                )
                if iou_type == "keypoints":
                    points = np.array(a["keypoints"], float).reshape(17, 3)
                    points[:, :2] += rs.normal(0, jitter, (17, 2))
                    found[-1]["keypoints"] = points.ravel().tolist()
        return found

    return str(path), predictions(2.0), predictions(8.0)


def _pycocotools_primary(annotation_file, results, iou_type, images=None):
    """pycocotools' stats[0], over `images` (indices of its sorted image ids, repeats allowed)
    when given: its per-image results repeated, as a val set holding those images would give."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.evaluate()
        if images is not None:
            p = evaluator.params
            count, areas = len(p.imgIds), len(p.areaRng)
            evaluator.evalImgs = [
                evaluator.evalImgs[(k * areas + a) * count + i]
                for k in range(len(p.catIds))
                for a in range(areas)
                for i in images
            ]
            p.imgIds = list(range(len(images)))
            evaluator._paramsEval = copy.deepcopy(p)
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0]


@pytest.mark.parametrize("iou_type", ["bbox", "keypoints"])
def test_bootstrap_metric_is_pycocotools_on_the_val_set_and_on_a_resample(tmp_path, iou_type):
    annotation_file, good, _ = _val_set(tmp_path, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
    categories, rec_thrs = metrics._matched_categories(gt, copy.deepcopy(good), iou_type)
    every = np.arange(len(gt.imgs))
    expected = _pycocotools_primary(annotation_file, good, iou_type)
    assert 0.1 < expected < 0.99
    assert metrics._primary_ap(categories, rec_thrs, every) == pytest.approx(expected, abs=1e-12)
    drawn = np.random.default_rng(3).integers(0, len(every), len(every))
    assert len(set(drawn)) < len(drawn)  # repeats, as a bootstrap draws them
    resampled = _pycocotools_primary(annotation_file, good, iou_type, drawn)
    assert resampled != pytest.approx(expected, abs=1e-4)
    assert metrics._primary_ap(categories, rec_thrs, drawn) == pytest.approx(resampled, abs=1e-12)


def test_bootstrap_is_paired_and_repeatable(tmp_path):
    annotation_file, good, worse = _val_set(tmp_path, "bbox")
    results = {"good": good, "worse": worse, "same": copy.deepcopy(good), "none": []}
    draws = metrics.bootstrap_primary_metric(annotation_file, results, "bbox", 30)
    again = metrics.bootstrap_primary_metric(annotation_file, results, "bbox", 30)
    np.testing.assert_array_equal(draws["good"], again["good"])
    np.testing.assert_array_equal(draws["good"], draws["same"])  # the same draws for each
    np.testing.assert_array_equal(draws["none"], np.zeros(30))
    assert np.std(draws["good"]) > 0
    assert np.mean(draws["good"] - draws["worse"]) > 0


# === in the report ===


def _report(tmp_path, task="detection"):
    iou_type = metrics.IOU_TYPES[task]
    annotation_file, good, worse = _val_set(tmp_path, iou_type)
    metric = metrics.METRIC_NAMES[iou_type][0]
    artifacts = []
    for name, results in (("keras_float", good), ("tflite_int8", good), ("tflite_int8_ptq", worse)):
        predictions = tmp_path / "predictions" / f"{name}.json"
        predictions.parent.mkdir(exist_ok=True)
        predictions.write_text(json.dumps(results))
        value = metrics.coco_metrics(annotation_file, results, iou_type)[metric]
        artifacts.append(
            {
                "name": name,
                "path": name,
                "format": "tflite",
                "precision": "int8",
                "size_bytes": 1,
                "gzip_bytes": 1,
                "sparsity": 0.0,
                "metrics": {metric: value},
                "predictions": f"predictions/{name}.json",
            }
        )
    stages = [{"name": "qat", "steps": 1, "seconds": 1.0}]
    return {
        "task": task,
        "input_size": [64, 64],
        "val_annotations": annotation_file,
        "stages": stages,
        "artifacts": artifacts,
    }


@pytest.mark.parametrize("task", ["detection", "pose"])
def test_write_report_adds_the_verdict_and_its_line(tmp_path, task):
    report = _report(tmp_path, task)
    report_lib.write_report(str(tmp_path / "report.json"), report)
    written = json.loads((tmp_path / "report.json").read_text())
    verdict = written["verdict"]
    assert verdict["metric"] == metrics.METRIC_NAMES[metrics.IOU_TYPES[task]][0]
    assert verdict["qat_ratio"] == pytest.approx(1.0)
    assert verdict["qat_drop"] == pytest.approx(0.0) and verdict["qat_drop_noise"] >= 0
    assert verdict["qat_minus_ptq"] > verdict["qat_minus_ptq_noise"] > 0
    assert verdict["recommendation"] == SHIP_QAT
    markdown = (tmp_path / "report.md").read_text().splitlines()
    assert markdown[-1] == verdict_line(verdict)


def test_no_verdict_without_the_three_rows(tmp_path):
    report = _report(tmp_path)
    report["verdict"] = {"stale": True}
    report["artifacts"] = report["artifacts"][:2]
    assert compute_verdict(report, str(tmp_path)) is None
    report_lib.write_report(str(tmp_path / "report.json"), report)
    assert "verdict" not in json.loads((tmp_path / "report.json").read_text())
    assert "Verdict" not in (tmp_path / "report.md").read_text()
