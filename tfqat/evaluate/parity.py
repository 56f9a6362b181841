"""Do the backends agree? Output differences in int8 steps, and where a graph starts to differ.

PARITY_IMAGES val images run through tflite_int8 (the reference), keras_qat, the ONNX file and
the OpenVINO IR; the differences go into report.json's "parity". When an int8 backend loses
too much of the metric, `layer_report` finds the first Keras layer where the ONNX file leaves
the .tflite.
"""

import os

import numpy as np

from tfqat.export.openvino.onnx_graph import Graph, initializer, intermediate_values
from tfqat.runtime.backends import open_backend

PARITY_IMAGES = 16


# === Comparison ===


def parity(runners: dict, images, reference: str = "tflite_int8", steps=None) -> dict:
    """Output differences of each runner against the reference runner, in int8 steps.

    Args:
      runners: {name: callable(images) -> list of float arrays}, same output order (e.g.
        TFLiteRunner, OnnxRunner, OpenVINORunner), including `reference`.
      images: float32 [N, H, W, 3] pixels 0..255.
      steps: {output name: int8 scale of that output} (the .tflite's output scales);
        needs `runners[reference].output_names`.
    Returns {runner name: {output name: {"max", "p99", "mean": |difference| in steps}}},
    without the reference.
    """
    names = list(runners[reference].output_names)
    expected = runners[reference](images)
    report = {}
    for name, runner in runners.items():
        if name == reference:
            continue
        order = getattr(runner, "output_names", names)
        if list(order) != names:
            raise ValueError(f"runner {name!r} outputs {list(order)}, reference {names}")
        report[name] = {
            output: _difference_in_steps(got, want, (steps or {}).get(output, 1.0))
            for output, got, want in zip(names, runner(images), expected)
        }
    return report


def _difference_in_steps(got, want, step) -> dict:
    difference = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) / step
    return {
        "max": round(float(difference.max()), 3),
        "p99": round(float(np.percentile(difference, 99)), 3),
        "mean": round(float(difference.mean()), 4),
    }


def output_steps(tflite_path) -> dict:
    """{output name: scale} of an int8 .tflite's outputs: one int8 step of each output."""
    from tfqat.export.tflite.flatbuffer import inspect_model, output_names

    outputs = inspect_model(tflite_path)["outputs"]
    return dict(zip(output_names(tflite_path), (float(o["scale"]) for o in outputs)))


def backend_parity(task, keras_qat, export_dir) -> dict:
    """Output differences, in int8 steps of the .tflite outputs, of keras_qat, ONNX and
    OpenVINO against tflite_int8 on the first PARITY_IMAGES val images."""
    from tfqat.tasks.common import keras_predict_fn

    int8_tflite = os.path.join(export_dir, "model_int8.tflite")
    runners = {
        "tflite_int8": open_backend(int8_tflite),
        "onnx_int8": open_backend(os.path.join(export_dir, "model_int8.onnx")),
        "openvino_int8": open_backend(os.path.join(export_dir, "openvino", "model_int8.xml")),
    }
    keras_fn = keras_predict_fn(keras_qat)
    keras_fn.output_names = runners["tflite_int8"].output_names
    runners["keras_qat"] = keras_fn
    images = task.preprocessed_images(PARITY_IMAGES, split="val")
    return parity(runners, images, steps=output_steps(int8_tflite))


# === Layer-by-layer mismatch report ===


def layer_report(tflite_path, onnx_path, images, top: int = 10) -> dict:
    """Where an ONNX file starts to differ from its .tflite, layer by layer, in int8 steps.

    tf2onnx keeps the .tflite's tensor names, so every int8 activation the two files share is
    compared: the .tflite's (LiteRT, all tensors preserved) against the ONNX file's
    (onnxruntime without graph optimizations: exact Q/DQ semantics, no int8 kernels), in steps
    of that tensor's .tflite scale. Keyed by Keras layer name (TF-MOT's "quant_<layer>").

    Returns {"layers": [{"layer", "tensor", "max", "p99", "mean"}] in the .tflite's tensor
    order, "first_over_one_step": the first of them whose mean difference exceeds one step,
    "worst": the `top` layers with the largest mean difference}.
    """
    tflite_tensors = _tflite_activations(tflite_path, images)
    onnx_tensors = _onnx_activations(onnx_path, images, list(tflite_tensors))
    layers = []
    for name, values in onnx_tensors.items():
        reference, scale = tflite_tensors[name]
        if values.ndim == 4:
            values = values.transpose(0, 2, 3, 1)  # tf2onnx's NCHW -> the .tflite's NHWC
        if values.shape != reference.shape:
            continue
        layers.append(
            {
                "layer": keras_layer_name(name),
                "tensor": name,
                **_difference_in_steps(values, reference, scale),
            }
        )
    first = next((row["layer"] for row in layers if row["mean"] > 1.0), None)
    worst = sorted(layers, key=lambda row: -row["mean"])[:top]
    return {"layers": layers, "first_over_one_step": first, "worst": worst}


def keras_layer_name(tensor_name: str) -> str:
    """The Keras layer behind a .tflite tensor name ("model/quant_c2f_p3_cv1_conv/Conv2D;...")."""
    import re

    match = re.search(r"quant_([^/;:]+)", tensor_name)
    return match.group(1) if match else tensor_name.split(";")[0]


def _tflite_activations(tflite_path, images) -> dict:
    """{tensor name: (dequantized values [N, ...], scale)} of every int8 activation."""
    from ai_edge_litert.interpreter import Interpreter

    from tfqat.runtime.pixels import quantize_pixels

    interpreter = Interpreter(
        model_path=os.fspath(tflite_path), experimental_preserve_all_tensors=True
    )
    interpreter.allocate_tensors()
    (model_input,) = interpreter.get_input_details()
    details = [
        d
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8
        and d["quantization"][0] > 0
        and d["index"] != model_input["index"]
        and len(d["shape"]) >= 2
    ]
    collected = {d["name"]: [] for d in details}
    for image in quantize_pixels(images, np.int8):
        interpreter.set_tensor(model_input["index"], image[None])
        interpreter.invoke()
        for d in details:
            try:
                collected[d["name"]].append(interpreter.get_tensor(d["index"]).copy())
            except ValueError:  # a constant (weights) or a freed tensor
                collected.pop(d["name"], None)
    return {
        d["name"]: (
            (np.concatenate(collected[d["name"]]).astype(np.float32) - d["quantization"][1])
            * d["quantization"][0],
            d["quantization"][0],
        )
        for d in details
        if collected.get(d["name"])
    }


def _onnx_activations(onnx_path, images, names) -> dict:
    """{tensor name: dequantized values} of the ONNX file's int8 tensors named in `names`."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(os.fspath(onnx_path))
    graph = Graph(model.graph)
    wanted = [
        n for n in names if n in graph.producer and graph.producer[n].op_type == "QuantizeLinear"
    ]
    outputs = {n: [] for n in wanted}
    for values in intermediate_values(model, wanted, TensorProto.INT8, images):
        for n, value in values.items():
            outputs[n].append(value)
    quantization = {
        n: [initializer(graph, i).astype(np.float32) for i in graph.producer[n].input[1:3]]
        for n in wanted
    }
    return {
        n: (np.concatenate(o).astype(np.float32) - quantization[n][1]) * quantization[n][0]
        for n, o in outputs.items()
    }


def layer_report_text(task, export_dir) -> str:
    """Where the ONNX graph starts to differ from the .tflite, by Keras layer (int8 steps)."""
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
