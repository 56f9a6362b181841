"""Report rows of a run's models and files: each one evaluated on the val set by its own runtime.

The end of a recipe (`tfqat.recipe.run`) and `python -m tfqat.export` both call
`export_and_evaluate`, so a run's artifacts are the same whichever wrote them.
"""

import json
import os

import numpy as np

from tfqat.data.letterbox import letterboxed_batches
from tfqat.evaluate import report as report_lib
from tfqat.evaluate.android import android_latency, android_results
from tfqat.evaluate.parity import backend_parity, layer_report_text
from tfqat.export.artifacts import (
    ANDROID_ARTIFACT,
    EXPORTED,
    artifact_kind,
    export_files,
    exported_files,
)
from tfqat.export.errors import ExportValidationError
from tfqat.export.tflite.flatbuffer import tflite_kernel_sparsity
from tfqat.fileio import atomic_write
from tfqat.runtime.android import AndroidDetector
from tfqat.runtime.backends import file_format, open_backend

# An int8 backend whose task metric falls more than this (relative) below tflite_int8 fails.
MAX_METRIC_DROP = 0.01
CHECKED_BACKENDS = ("onnx_int8", "openvino_int8", ANDROID_ARTIFACT)


def export_and_evaluate(task, models, model_dir, calibration, min_output_levels=32):
    """Exports `models` ({"keras_float", "keras_qat"}), evaluates every file, checks parity.

    Returns (report rows, parity report, problems). Raises ExportValidationError when a file is
    not what it claims. `problems` lists each int8 backend that lost more than MAX_METRIC_DROP
    of tflite_int8's metric, with a layer-by-layer report: the caller records the rows, then
    fails (`fail_on`).
    """
    export_dir = export_files(task, models, model_dir, calibration, min_output_levels)
    rows = [
        evaluate_exported(task, os.path.join(export_dir, name), model_dir)
        for name in exported_files(task.name)
    ]
    parity = backend_parity(task, models["keras_qat"], export_dir)
    problems = backend_metric_problems(task, rows)
    if problems:
        problems.append(layer_report_text(task, export_dir))
    return rows, parity, problems


def fail_on(problems):
    if problems:
        raise ExportValidationError(
            "int8 backends disagree with tflite_int8 (every row is in "
            "report.json):\n  " + "\n  ".join(problems)
        )


def artifact_bytes(path) -> bytes:
    """The bytes that make the artifact: an IR's .xml and its .bin."""
    paths = [path, os.path.splitext(path)[0] + ".bin"] if path.endswith(".xml") else [path]
    data = b""
    for part in paths:
        with open(part, "rb") as f:
            data += f.read()
    return data


def file_kernel_sparsity(path) -> float:
    """Fraction of exact zeros in an exported file's conv/dense kernels."""
    if path.endswith(".tflite"):
        return tflite_kernel_sparsity(path)
    return report_lib.zero_fraction(_rank4_constants(path))


def _rank4_constants(path) -> list[np.ndarray]:
    """Convolution kernels of an .onnx (initializers) or IR (Constant ops): the rank-4 ones."""
    if path.endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(path).graph
        return [numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 4]
    import openvino as ov

    model = ov.Core().read_model(path)
    return [
        op.get_data()
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 4
    ]


def evaluate_exported(task, path, report_dir, predictions_dir=None, kind=None):
    """An exported file's report row, run by its own runtime (LiteRT, onnxruntime, OpenVINO).

    `report_dir` and `predictions_dir` as `evaluated_row` (a run's: its model_dir); `kind`:
    (artifact name, format, precision), by default from the file's place in export/.
    """
    name, fmt, precision = kind or artifact_kind(path)
    android = name == ANDROID_ARTIFACT
    row = evaluated_row(
        task,
        None if android else open_backend(path),
        name,
        path,
        fmt,
        precision,
        artifact_bytes(path),
        file_kernel_sparsity(path),
        report_dir,
        android_results(AndroidDetector(path), task.val_set) if android else None,
        predictions_dir,
    )
    if android:
        row["latency"] = android_latency_beside_int8(task, path)
    return row


def android_latency_beside_int8(task, path) -> dict:
    """The Android file's latency (decode and NMS in the graph) next to model_int8.tflite + the
    numpy post-processor, on the first val image."""
    first = next(letterboxed_batches(task.val_set, task.config.input_size, 1, limit=1))[1]
    int8_path = os.path.join(os.path.dirname(path), "model_int8.tflite")
    return android_latency(path, int8_path, first[0])


def exported_kind(path, metadata: dict) -> tuple[str, str, str]:
    """(artifact name, format, precision) of an exported file, by its file name (EXPORTED), also
    when copied out of export/. A file renamed after export is its own artifact, named after the
    file; a .tflite's precision is its input's (its metadata), another file's "unknown"."""
    name = os.path.basename(path)
    for key, kind in EXPORTED.items():
        if name in (key, key.removeprefix("openvino/")):
            return kind
    fmt = file_format(path)
    precision = metadata["input"]["dtype"] if fmt == "tflite" else "unknown"
    return os.path.splitext(name)[0], fmt, precision


def evaluated_row(
    task,
    predict_fn,
    name,
    path,
    fmt,
    precision,
    data,
    sparsity,
    report_dir,
    results=None,
    predictions_dir=None,
):
    """Writes `<predictions_dir>/<name>.json` (default `<report_dir>/predictions/`) and returns
    the report row; paths in the row are relative to `report_dir`, the report's folder."""
    if results is None:
        results = task.predict(predict_fn)
    predictions_dir = predictions_dir or os.path.join(report_dir, "predictions")
    predictions = os.path.join(predictions_dir, f"{name}.json")
    os.makedirs(predictions_dir, exist_ok=True)
    atomic_write(predictions, json.dumps(results))
    return report_lib.artifact_row(
        name, path, fmt, precision, data, sparsity, task.metrics(results), predictions, report_dir
    )


def backend_metric_problems(task, rows) -> list[str]:
    """Each int8 backend whose main metric is > MAX_METRIC_DROP below tflite_int8's."""
    metric = task.primary_metric
    by_name = {row["name"]: row["metrics"][metric] for row in rows}
    reference = by_name["tflite_int8"]
    return [
        f"{name}: {metric} {value:.4f} < {1 - MAX_METRIC_DROP:.2f} x tflite_int8 {reference:.4f}"
        for name, value in by_name.items()
        if name in CHECKED_BACKENDS and value < (1 - MAX_METRIC_DROP) * reference
    ]


def evaluate_keras(
    task, model, name, model_dir, results=None, predictions_dir=None, report_dir=None
):
    """A Keras model's row; a QAT model's precision is "int8-simulated" (fake-quantized float).

    `results`: the model's COCO results on the val set if already predicted, else it is run.
    `model_dir` is the run's; `report_dir` (default `model_dir`) and `predictions_dir` as
    `evaluated_row`.
    """
    from tfqat.tasks.common import keras_predict_fn

    weights = [w.numpy() for w in model.weights if w.dtype.is_floating]
    data = b"".join(np.asarray(w, np.float32).tobytes() for w in weights)
    kernels = [w.numpy() for w in model.weights if w.name.endswith("kernel:0")]
    precision = "int8-simulated" if name == "keras_qat" else "float32"
    return evaluated_row(
        task,
        keras_predict_fn(model),
        name,
        os.path.join(model_dir, "checkpoints"),
        "keras",
        precision,
        data,
        report_lib.zero_fraction(kernels),
        report_dir or model_dir,
        results,
        predictions_dir,
    )
