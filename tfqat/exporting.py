"""Every exported file of a run (CONTRACT.md's export/): written, validated, evaluated, compared.

The end of a recipe (`tfqat.runner`) and `python -m tfqat.export` both call
`export_and_evaluate`, so a run's artifacts are the same whichever wrote them.
"""

import os

import numpy as np

from tfqat import report as report_lib
from tfqat.evaluation import write_results
from tfqat.fileio import atomic_write

# Exported file (path relative to export/) -> (artifact name, format, precision).
EXPORTED = {
    "model_float32.tflite": ("tflite_float32", "tflite", "float32"),
    "model_int8.tflite": ("tflite_int8", "tflite", "int8"),
    "model_int8_ptq.tflite": ("tflite_int8_ptq", "tflite", "int8"),
    "model_int8.onnx": ("onnx_int8", "onnx", "int8"),
    "openvino/model_int8.xml": ("openvino_int8", "openvino", "int8"),
    "openvino/model_float.xml": ("openvino_float", "openvino", "float32"),
}
# An int8 backend whose task metric falls more than this (relative) below tflite_int8 fails.
MAX_METRIC_DROP = 0.01
PARITY_IMAGES = 16


def export_and_evaluate(task, models, model_dir, calibration, min_output_levels=32):
    """Exports `models` ({"keras_float", "keras_qat"}), evaluates every file, checks parity.

    Returns (report rows, parity report, problems). Raises ExportValidationError when a file is
    not what it claims. `problems` lists each int8 backend that lost more than MAX_METRIC_DROP
    of tflite_int8's metric, with a layer-by-layer report: the caller records the rows, then
    fails (`fail_on`).
    """
    export_dir = export_files(task, models, model_dir, calibration, min_output_levels)
    rows = [evaluate_exported(task, os.path.join(export_dir, name), model_dir) for name in EXPORTED]
    parity = backend_parity(task, models["keras_qat"], export_dir)
    problems = backend_metric_problems(task, rows)
    if problems:
        problems.append(_layer_report_text(task, export_dir))
    return rows, parity, problems


def fail_on(problems):
    from tfqat.export.tflite_runtime import ExportValidationError

    if problems:
        raise ExportValidationError(
            "int8 backends disagree with tflite_int8 (every row is in "
            "report.json):\n  " + "\n  ".join(problems)
        )


def export_files(task, models, model_dir, calibration, min_output_levels=32):
    """Writes and validates every file of EXPORTED plus export/metadata.json; returns export/.

    The metadata records the run's flags.txt (the recipe that made the model).
    """
    from tfqat.export import metadata as metadata_lib
    from tfqat.export import tflite_convert
    from tfqat.export.intel import export_intel
    from tfqat.export.tflite_runtime import validate_int8

    representative = [image[None] for image in calibration]
    files = {
        "model_float32.tflite": tflite_convert.convert_float32(models["keras_float"]),
        "model_int8_ptq.tflite": tflite_convert.convert_int8(models["keras_float"], representative),
        "model_int8.tflite": tflite_convert.convert_int8(models["keras_qat"], representative),
    }
    for name, data in files.items():
        if EXPORTED[name][2] == "int8":
            validate_int8(
                data,
                calibration,
                score_output_names=task.score_output_names,
                min_levels=min_output_levels,
            )
    export_dir = os.path.join(model_dir, "export")
    os.makedirs(export_dir, exist_ok=True)
    flags_file = os.path.join(model_dir, "flags.txt")
    flags_text = open(flags_file).read() if os.path.exists(flags_file) else ""
    for name, data in files.items():
        metadata = metadata_lib.build_metadata(task, flags_text, data)
        atomic_write(os.path.join(export_dir, name), metadata_lib.embed_metadata(data, metadata))
        if name == "model_int8.tflite":  # also describes the .onnx and IRs made from this file
            metadata_lib.write_metadata(export_dir, metadata)
    export_intel(export_dir, calibration)
    return export_dir


def _runner_of(path):
    if path.endswith(".tflite"):
        from tfqat.export.tflite_runtime import TFLiteRunner

        return TFLiteRunner(path)
    from tfqat.export import intel_runtime

    if path.endswith(".onnx"):
        return intel_runtime.OnnxRunner(path)
    return intel_runtime.OpenVINORunner(path)


def artifact_kind(path) -> tuple[str, str, str]:
    """(artifact name, format, precision) of an exported file, from its place in export/."""
    parts = os.path.abspath(path).split(os.sep)
    key = "/".join(parts[-2:]) if parts[-2] == "openvino" else parts[-1]
    if key not in EXPORTED:
        raise ValueError(f"{path}: unknown artifact; expected export/ + one of {sorted(EXPORTED)}")
    return EXPORTED[key]


def _file_bytes(path) -> bytes:
    """The bytes that make the artifact: an IR's .xml and its .bin."""
    paths = [path, os.path.splitext(path)[0] + ".bin"] if path.endswith(".xml") else [path]
    data = b""
    for part in paths:
        with open(part, "rb") as f:
            data += f.read()
    return data


def weight_sparsity(path) -> float:
    """Fraction of exact zeros in the file's conv/dense kernels."""
    if path.endswith(".tflite"):
        from tfqat.export.tflite_runtime import kernel_sparsity

        return kernel_sparsity(path)
    return report_lib.kernel_sparsity(_rank4_constants(path))


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


def evaluate_exported(task, path, model_dir):
    """An exported file's report row, run by its own runtime (LiteRT, onnxruntime, OpenVINO)."""
    name, fmt, precision = artifact_kind(path)
    return evaluated_row(
        task,
        _runner_of(path),
        name,
        path,
        fmt,
        precision,
        _file_bytes(path),
        weight_sparsity(path),
        model_dir,
    )


def evaluated_row(
    task, predict_fn, name, path, fmt, precision, data, sparsity, model_dir, results=None
):
    if results is None:
        results = task.predict(predict_fn)
    predictions = os.path.join(model_dir, "predictions", f"{name}.json")
    os.makedirs(os.path.dirname(predictions), exist_ok=True)
    write_results(predictions, results)
    return report_lib.artifact_row(
        name, path, fmt, precision, data, sparsity, task.metrics(results), predictions, model_dir
    )


def backend_metric_problems(task, rows) -> list[str]:
    """Each int8 backend whose main metric is > MAX_METRIC_DROP below tflite_int8's."""
    metric = task.primary_metric
    by_name = {row["name"]: row["metrics"][metric] for row in rows}
    reference = by_name["tflite_int8"]
    return [
        f"{name}: {metric} {value:.4f} < {1 - MAX_METRIC_DROP:.2f} x tflite_int8 {reference:.4f}"
        for name, value in by_name.items()
        if name in ("onnx_int8", "openvino_int8") and value < (1 - MAX_METRIC_DROP) * reference
    ]


def _layer_report_text(task, export_dir) -> str:
    """Where the ONNX graph starts to differ from the .tflite, by Keras layer (int8 steps)."""
    from tfqat.export.intel import layer_report

    report = layer_report(
        os.path.join(export_dir, "model_int8.tflite"),
        os.path.join(export_dir, "model_int8.onnx"),
        task.preprocessed_images(PARITY_IMAGES, split="val"),
    )
    worst = "\n    ".join(
        f"{row['layer']}: mean {row['mean']}, max {row['max']} steps" for row in report["worst"]
    )
    return (
        f"layer by layer (ONNX vs .tflite, {PARITY_IMAGES} val images): first layer over "
        f"one step on average: {report['first_over_one_step']}; largest:\n    {worst}"
    )


def backend_parity(task, keras_qat, export_dir) -> dict:
    """Output differences, in int8 steps of the .tflite outputs, of keras_qat, ONNX and
    OpenVINO against tflite_int8 on the first PARITY_IMAGES val images."""
    from tfqat.export.intel import output_steps, parity
    from tfqat.tasks.common import keras_predict_fn

    int8_tflite = os.path.join(export_dir, "model_int8.tflite")
    runners = {
        "tflite_int8": _runner_of(int8_tflite),
        "onnx_int8": _runner_of(os.path.join(export_dir, "model_int8.onnx")),
        "openvino_int8": _runner_of(os.path.join(export_dir, "openvino", "model_int8.xml")),
    }
    keras_fn = keras_predict_fn(keras_qat)
    keras_fn.output_names = runners["tflite_int8"].output_names
    runners["keras_qat"] = keras_fn
    images = task.preprocessed_images(PARITY_IMAGES, split="val")
    return parity(runners, images, steps=output_steps(int8_tflite))
