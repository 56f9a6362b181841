"""The pose recipe end to end: the smoke recipe's run directory, report and recomputable AP."""

import json
import os

import pytest
from conftest import assert_one_tensorboard_run_per_stage, assert_verdict_ends_the_report

ARTIFACTS = ["keras_float", "keras_qat", "tflite_float32", "tflite_int8_ptq", "tflite_int8"]


@pytest.mark.slow
def test_smoke_pose_recipe_writes_the_run_directory(smoke_pose_run):
    for path in [
        "flags.txt",
        "report.json",
        "report.md",
        "export/model_int8.tflite",
        "export/model_int8_ptq.tflite",
        "export/model_float32.tflite",
    ] + [f"predictions/{name}.json" for name in ARTIFACTS]:
        assert (smoke_pose_run / path).exists(), path
    report = json.loads((smoke_pose_run / "report.json").read_text())
    assert_one_tensorboard_run_per_stage(smoke_pose_run, report["stages"])
    assert report["task"] == "pose" and report["input_size"] == [64, 32]
    assert report["val_annotations"].endswith("person_keypoints_val.json")
    assert os.path.isabs(report["val_annotations"])
    assert [s["name"] for s in report["stages"]] == ["float", "qat", "float_reference"]
    # At least these; the export may add ONNX / OpenVINO rows.
    assert set(ARTIFACTS) <= {a["name"] for a in report["artifacts"]}
    for row in report["artifacts"]:
        assert set(row["metrics"]) == {"AP", "AP50"}
    assert_verdict_ends_the_report(smoke_pose_run, report, "AP")


@pytest.mark.slow
def test_smoke_pose_ap_recomputes_from_predictions_with_pycocotools_alone(smoke_pose_run):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    report = json.loads((smoke_pose_run / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    assert row["precision"] == "int8" and row["size_bytes"] > 0
    results = json.loads((smoke_pose_run / row["predictions"]).read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(report["val_annotations"])
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(row["metrics"]["AP"], abs=1e-6)
    assert evaluator.stats[1] == pytest.approx(row["metrics"]["AP50"], abs=1e-6)
    # One prediction per GT person box, keypoints in image coordinates.
    assert len(results) == len(gt.getAnnIds())
    assert all(len(r["keypoints"]) == 3 * 17 for r in results)
