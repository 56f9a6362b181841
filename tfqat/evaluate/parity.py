"""Do the backends agree? Output differences in int8 steps, and where a graph starts to differ.

PARITY_IMAGES val images run through tflite_int8 (the reference), keras_qat, the ONNX file and
the OpenVINO IR; the differences go into report.json's "parity".
"""

import os

from tfqat.runtime.backends import open_backend

PARITY_IMAGES = 16


def layer_report_text(task, export_dir) -> str:
    """Where the ONNX graph starts to differ from the .tflite, by Keras layer (int8 steps)."""
    from tfqat.export.openvino.rewrites import layer_report

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
    from tfqat.export.openvino.rewrites import output_steps, parity
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
