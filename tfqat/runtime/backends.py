"""The one dispatch from a model file to the runner of its format."""

import contextlib
import os

# File extension -> format name, as report.json's "format" says it.
FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}


def file_format(path) -> str:
    """ "tflite", "onnx" or "openvino"; ValueError naming the supported extensions otherwise."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in FORMATS:
        raise ValueError(
            f"{path}: unknown model format {extension!r}; expected one of {sorted(FORMATS)}"
        )
    return FORMATS[extension]


def open_backend(path, num_threads: int = 2, output_order=None, output_quantization=None):
    """A runner for `path`: float32 pixel batches [N, H, W, 3] -> list of float32 outputs.

    .tflite runs on LiteRT (else tflite-runtime), .onnx on onnxruntime, .xml on OpenVINO; each
    runtime is imported only when its format is asked for. `output_quantization`
    ({name: (scale, zero point)}) dequantizes integer outputs of .onnx / .xml files.
    """
    kind = file_format(path)
    weights = os.path.splitext(os.fspath(path))[0] + ".bin"
    if kind == "openvino" and not os.path.isfile(weights):
        raise FileNotFoundError(f"{path}: no {weights} beside it (an OpenVINO IR is both files)")
    if kind == "tflite":
        from tfqat.runtime.tflite import TFLiteRunner

        return TFLiteRunner(path, num_threads=num_threads, output_order=output_order)
    from tfqat.runtime import onnx_openvino

    runner = onnx_openvino.OnnxRunner if kind == "onnx" else onnx_openvino.OpenVINORunner
    return runner(
        path,
        num_threads=num_threads,
        output_order=output_order,
        output_quantization=output_quantization,
    )


@contextlib.contextmanager
def loading(path, runtime: str):
    """Turns a runtime's refusal to load a file into a ValueError naming the file.

    Each runtime has its own exception types (LiteRT ValueError, onnxruntime its own classes
    derived from Exception, OpenVINO RuntimeError): wrap only the call that loads the file.
    """
    try:
        yield
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(e).__name__
        raise ValueError(f"{path}: {runtime} cannot load it: {reason}") from e
