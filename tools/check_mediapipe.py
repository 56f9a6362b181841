"""Checks model_int8_android.tflite with MediaPipe's own ObjectDetector (the C++ task of Android).

    python tools/check_mediapipe.py --model=RUN/export/model_int8_android.tflite \
        [--val_annotations=JSON --val_images=DIR] [--min_ratio=0.98] [--json=OUT.json]

Builds (once) a venv with PyPI's mediapipe==1.2.2 under $TFQAT_CACHE_DIR/venvs/ (default
~/.cache/tfqat), runs ObjectDetector (score_threshold 0.001, all results) over the val images
in it (tools/mediapipe_detect.py), scores the detections with pycocotools and compares their
mAP50-95 with the run's tflite_int8 (model_int8.tflite + tfqat's numpy post-processor; from
report.json on the run's own val set, else run here with LiteRT), and with the Android file
run by LiteRT on our letterbox (`tfqat.evaluate.android`).

MediaPipe stretches the image to the model input (no letterbox: the same on square images) and
returns integer pixel boxes, truncated. The truncation alone costs about 2 % mAP50-95 on the
synthetic set's small objects at 256 px, so by default the decision reads each integer box as
the centre of the pixel intervals it stands for (--pixel_boxes=centre); the score of the boxes
as returned is printed and written too. Exit status: 0 when MediaPipe's mAP50-95 is at least
--min_ratio x tflite_int8's, 1 below, 2 when the check cannot run (bad arguments, no mediapipe
venv: PyPI unreachable).
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from tfqat.data.coco import load_coco
from tfqat.data.images import default_cache_dir
from tfqat.evaluate import report as report_lib
from tfqat.evaluate.android import android_results
from tfqat.fileio import atomic_write
from tfqat.postprocess.detection import detection_results
from tfqat.postprocess.metrics import coco_metrics
from tfqat.runtime.android import AndroidDetector
from tfqat.runtime.metadata import read_metadata
from tfqat.runtime.tflite import TFLiteRunner

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The Android detector file (export/model_int8_android.tflite).")
flags.DEFINE_string("val_annotations", None, "COCO instances JSON; default: the run's val set.")
flags.DEFINE_string("val_images", None, "Image folder of --val_annotations.")
flags.DEFINE_float("min_ratio", 0.98, "Fail below this fraction of tflite_int8's mAP50-95.")
flags.DEFINE_string("json", None, "Write the numbers here too (JSON).")
flags.DEFINE_bool("litert", True, "Also score the file run by LiteRT on our letterbox.")
flags.DEFINE_enum(
    "pixel_boxes",
    "centre",
    ["centre", "as_returned"],
    "Which MediaPipe score decides: its integer pixel boxes read as the centres of "
    "the pixel intervals they truncate (x + 0.5, w + 0.5), or as returned. Both are "
    "printed and written.",
)
flags.mark_flag_as_required("model")

MEDIAPIPE = "mediapipe==1.2.2"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mediapipe_detect.py")
_READY = ".tfqat-ready"


class CheckError(Exception):
    """The check cannot run: a one-line message for the user, exit status 2."""


# === The mediapipe venv ===


def mediapipe_python() -> str:
    """The python of the cached mediapipe venv, created (and mediapipe installed) if needed."""
    folder = os.path.join(default_cache_dir(), "venvs", MEDIAPIPE.replace("==", "-"))
    python = os.path.join(folder, "bin", "python")
    if os.path.exists(os.path.join(folder, _READY)):
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--clear", folder], "create a venv for mediapipe")
    _run([python, "-m", "pip", "install", "--quiet", MEDIAPIPE], f"install {MEDIAPIPE} from PyPI")
    with open(os.path.join(folder, _READY), "w") as f:
        f.write(MEDIAPIPE + "\n")
    return python


def _run(command, what: str):
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise CheckError(f"cannot {what}: {last}")


# === Detections ===


def mediapipe_detections(python: str, model: str, dataset, workdir: str) -> dict:
    images = [{"image_id": s.image_id, "path": s.path} for s in dataset.samples]
    listing, output = os.path.join(workdir, "images.json"), os.path.join(workdir, "out.json")
    with open(listing, "w") as f:
        json.dump(images, f)
    _run(
        [
            python,
            WORKER,
            f"--model={os.path.abspath(model)}",
            f"--images={listing}",
            f"--output={output}",
        ],
        "run MediaPipe's ObjectDetector",
    )
    with open(output) as f:
        return json.load(f)


def mediapipe_coco_results(payload: dict, category_ids, labels, centre: bool) -> list[dict]:
    """COCO results of ObjectDetector's detections.

    ObjectDetector returns integer pixel boxes, truncated (C++ int casts of xmin * width and
    of box width * width): the true left edge lies in [x, x + 1), the true width in [w, w + 1).
    With `centre` a box is read as the middle of those intervals, [x + 0.5, y + 0.5, w + 0.5,
    h + 0.5]; otherwise as returned. A category is known by its name (labels.txt line) or,
    without one, by its index.
    """
    index_of = {name: i for i, name in enumerate(labels)}
    shift = 0.5 if centre else 0.0
    results = []
    for entry in payload["results"]:
        for d in entry["detections"]:
            index = index_of.get(d["name"], d["index"])
            if index is None:
                raise CheckError(
                    f"MediaPipe returned a category with neither a known name nor an index: {d}"
                )
            results.append(
                {
                    "image_id": entry["image_id"],
                    "category_id": int(category_ids[index]),
                    "bbox": [float(v) + shift for v in d["box"]],
                    "score": d["score"],
                }
            )
    return results


# === Reference: tflite_int8 ===


def _run_dir(model: str) -> str | None:
    export_dir = os.path.dirname(os.path.abspath(model))
    if os.path.basename(export_dir) != "export":
        return None
    return os.path.dirname(export_dir)


def tflite_int8_reference(run_dir, dataset, input_size, same_val_set: bool) -> float:
    """tflite_int8's mAP50-95: report.json's on the run's val set, else run here."""
    report = report_lib.load_report(run_dir) if run_dir else None
    rows = {row["name"]: row for row in (report or {}).get("artifacts", [])}
    if same_val_set and "tflite_int8" in rows:
        return rows["tflite_int8"]["metrics"]["mAP50_95"]
    int8_path = os.path.join(run_dir or "", "export", "model_int8.tflite")
    if not os.path.isfile(int8_path):
        raise CheckError(f"no tflite_int8 to compare with: no report.json row and no {int8_path}")
    results = detection_results(TFLiteRunner(int8_path), dataset, input_size)
    return coco_metrics(dataset.annotation_file, results, "bbox")["mAP50_95"]


def _val_set(run_dir):
    """(annotations, images, same as the run's) from the flags or the run's report.json."""
    report = report_lib.load_report(run_dir) if run_dir else None
    run_set = (report["val_annotations"], report["val_images"]) if report else None
    if FLAGS.val_annotations or FLAGS.val_images:
        if not (FLAGS.val_annotations and FLAGS.val_images):
            raise CheckError("give both --val_annotations and --val_images, or neither")
        chosen = (os.path.abspath(FLAGS.val_annotations), os.path.abspath(FLAGS.val_images))
        return (*chosen, run_set is not None and tuple(map(os.path.abspath, run_set)) == chosen)
    if run_set is None:
        raise CheckError(
            f"{FLAGS.model} is not in a run's export/ with a report.json: give "
            "--val_annotations and --val_images"
        )
    return (*run_set, True)


def check(model: str) -> dict:
    if not os.path.isfile(model):
        raise CheckError(f"{model}: no such file")
    metadata = read_metadata(model)
    input_size = [int(v) for v in metadata["input"]["size"]]
    run_dir = _run_dir(model)
    annotations, images, same_val_set = _val_set(run_dir)
    dataset = load_coco(annotations, images, "detection")
    labels, category_ids = metadata["labels"]["names"], metadata["labels"]["category_ids"]
    python = mediapipe_python()
    with tempfile.TemporaryDirectory() as workdir:
        payload = mediapipe_detections(python, model, dataset, workdir)
    metrics = {
        kind: coco_metrics(
            annotations,
            mediapipe_coco_results(payload, category_ids, labels, centre=kind == "centre"),
            "bbox",
        )
        for kind in ("as_returned", "centre")
    }
    summary = {
        "model": os.path.abspath(model),
        "val_annotations": annotations,
        "images": len(dataset.samples),
        "mediapipe": payload["mediapipe_version"],
        "mediapipe_median_ms": payload["median_ms"],
        "mediapipe_detections": sum(len(r["detections"]) for r in payload["results"]),
        "mediapipe_metrics": metrics["as_returned"],
        "mediapipe_centred_metrics": metrics["centre"],
        "pixel_boxes": FLAGS.pixel_boxes,
        "tflite_int8_mAP50_95": tflite_int8_reference(run_dir, dataset, input_size, same_val_set),
    }
    if FLAGS.litert:
        litert = android_results(AndroidDetector(model), dataset)
        summary["litert_metrics"] = coco_metrics(annotations, litert, "bbox")
    reference = max(summary["tflite_int8_mAP50_95"], 1e-12)
    summary["ratio_as_returned"] = metrics["as_returned"]["mAP50_95"] / reference
    summary["ratio_centre"] = metrics["centre"]["mAP50_95"] / reference
    summary["ratio"] = summary[f"ratio_{FLAGS.pixel_boxes}"]
    return summary


def main(argv):
    del argv
    try:
        summary = check(FLAGS.model)
    except (CheckError, FileNotFoundError, ValueError) as e:
        print(f"check_mediapipe: {e}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.json:
        atomic_write(FLAGS.json, json.dumps(summary, indent=1) + "\n")
    reference = summary["tflite_int8_mAP50_95"]
    print(f"tflite_int8 + numpy post-processor  mAP50-95 {reference:.4f}")
    if "litert_metrics" in summary:
        print(
            f"android file, LiteRT, letterbox    mAP50-95 "
            f"{summary['litert_metrics']['mAP50_95']:.4f}"
        )
    for kind, label in (
        ("as_returned", "integer boxes as returned"),
        ("centre", "integer boxes at pixel centres"),
    ):
        values = summary[
            "mediapipe_metrics" if kind == "as_returned" else "mediapipe_centred_metrics"
        ]
        print(
            f"android file, MediaPipe {summary['mediapipe']}, {label:<30} mAP50-95 "
            f"{values['mAP50_95']:.4f} (mAP50 {values['mAP50']:.4f}) = "
            f"{summary['ratio_' + kind]:.3f} x tflite_int8"
        )
    print(
        f"{summary['images']} images, {summary['mediapipe_detections']} MediaPipe detections, "
        f"median {summary['mediapipe_median_ms']} ms per detect call; deciding: "
        f"{FLAGS.pixel_boxes}"
    )
    if summary["ratio"] < FLAGS.min_ratio:
        print(f"FAIL: below {FLAGS.min_ratio} x tflite_int8", file=sys.stderr)
        sys.exit(1)
    print(f"OK: at least {FLAGS.min_ratio} x tflite_int8")


if __name__ == "__main__":
    app.run(main)
