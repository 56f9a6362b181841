"""Run exported .onnx files (onnxruntime) and OpenVINO IRs on float pixel batches.

Nothing here imports TensorFlow, nor LiteRT: an Intel machine may have neither. onnxruntime and
openvino are imported when a runner is built, so this module imports with numpy alone.

Both runners have the interface of `tfqat.runtime.tflite.TFLiteRunner`:
`runner(images)` takes float32 [N, H, W, 3] pixels 0..255 and returns the model's outputs as
float32 arrays [N, ...], in `runner.output_names` order (for files from `tfqat.export.openvino`:
the Keras model's order, e.g. box_p3, cls_p3, box_p4, ... or heatmaps), so they are
`predict_fn`s for `task.predict`.

The input type says how pixels are fed, the same convention as the .tflite files:
  * int8: int8 = pixel - 128 (scale 1.0, zero point -128, `INPUT_QUANTIZATION`);
  * uint8: uint8 = pixel (scale 1.0, zero point 0);
  * float: the pixels as they are.
Integer outputs are dequantized with `output_quantization` ({name: (scale, zero point)}), which
files from `tfqat.export.openvino` do not need: their outputs are float already.
"""

import os

import numpy as np

from tfqat.runtime.backends import loading
from tfqat.runtime.pixels import quantize_pixels

__all__ = ["OnnxRunner", "OpenVINORunner"]


def _dequantize(values, quantization):
    if quantization is None or np.issubdtype(values.dtype, np.floating):
        return values.astype(np.float32)
    scale, zero_point = quantization
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _ordered(names, output_order):
    """Indices into `names` for `output_order` (None: the model's own order)."""
    if output_order is None:
        return list(range(len(names)))
    if sorted(output_order) != sorted(names):
        raise ValueError(f"model outputs {names} do not match output_order {list(output_order)}")
    return [names.index(n) for n in output_order]


class _Runner:
    """Chunking, input quantization and output dequantization shared by both runtimes.

    Subclasses set `input_dtype`, `batch` (None: dynamic), `_all_names`, and implement
    `infer(batch) -> list[np.ndarray]` on an already quantized batch of `batch` images.
    """

    def _init_outputs(self, output_order, output_quantization):
        self._indices = _ordered(self._all_names, output_order)
        self.output_names = [self._all_names[i] for i in self._indices]
        self.output_quantization = dict(output_quantization or {})

    def quantize(self, images) -> np.ndarray:
        return quantize_pixels(images, self.input_dtype)

    def raw(self, images) -> list[np.ndarray]:
        """The outputs as the model computes them (float for files from tfqat.export.openvino)."""
        inputs = self.quantize(images)
        chunk = self.batch or len(inputs)
        if len(inputs) % chunk:
            raise ValueError(f"model has a static batch of {chunk}; got {len(inputs)} images")
        outputs = [[] for _ in self._indices]
        for start in range(0, len(inputs), chunk):
            values = self.infer(inputs[start : start + chunk])
            for collected, index in zip(outputs, self._indices):
                collected.append(values[index])
        return [np.concatenate(o) for o in outputs]

    def __call__(self, images) -> list[np.ndarray]:
        return [
            _dequantize(values, self._output_quantization_of(name, values))
            for name, values in zip(self.output_names, self.raw(images))
        ]

    def _output_quantization_of(self, name, values):
        if np.issubdtype(values.dtype, np.floating):
            return None
        if name not in self.output_quantization:
            raise ValueError(
                f"output {name!r} is {values.dtype}; pass its (scale, zero point) in "
                "output_quantization to dequantize it"
            )
        return self.output_quantization[name]


_ONNX_TYPES = {
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


class OnnxRunner(_Runner):
    """Runs an .onnx file with onnxruntime (CPU) on float pixel batches; see the module doc."""

    def __init__(self, path, num_threads: int = 2, output_order=None, output_quantization=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        # Idle threads that spin steal the cores from whatever runs next (2-core machines).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with loading(path, "onnxruntime"):
            self.session = ort.InferenceSession(
                os.fspath(path), options, providers=["CPUExecutionProvider"]
            )
        (model_input,) = self.session.get_inputs()
        if model_input.type not in _ONNX_TYPES:
            raise ValueError(f"{path}: unsupported input type {model_input.type}")
        self.input_name = model_input.name
        self.input_dtype = np.dtype(_ONNX_TYPES[model_input.type])
        batch = model_input.shape[0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else None
        self._all_names = [o.name for o in self.session.get_outputs()]
        self._init_outputs(output_order, output_quantization)

    def infer(self, batch) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


_OV_TYPES = {"i8": np.int8, "u8": np.uint8, "f32": np.float32, "f16": np.float16}


class OpenVINORunner(_Runner):
    """Compiles an OpenVINO IR (.xml path) or `openvino.Model` on CPU and runs pixel batches.

    `precision_hint` is OpenVINO's INFERENCE_PRECISION_HINT ("f32", "bf16"; None: the plugin's
    default, bf16 for float models on CPUs with AMX). `runner.compiled` is the compiled model
    (its `get_runtime_model()` shows what each op really runs in).
    """

    def __init__(
        self,
        xml_path,
        num_threads: int = 2,
        precision_hint=None,
        output_order=None,
        output_quantization=None,
        core=None,
    ):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": int(num_threads), "PERFORMANCE_HINT": "LATENCY"}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        core = core or ov.Core()
        with loading(xml_path if _is_path(xml_path) else "the OpenVINO model", "OpenVINO"):
            model = core.read_model(os.fspath(xml_path)) if _is_path(xml_path) else xml_path
            self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        (model_input,) = self.compiled.inputs
        type_name = model_input.get_element_type().get_type_name()
        if type_name not in _OV_TYPES:
            raise ValueError(f"{xml_path}: unsupported input type {type_name}")
        self.input_dtype = np.dtype(_OV_TYPES[type_name])
        shape = model_input.get_partial_shape()
        self.batch = shape[0].get_length() if shape[0].is_static else None
        self._all_names = [o.get_any_name() for o in self.compiled.outputs]
        self._init_outputs(output_order, output_quantization)

    def infer(self, batch) -> list[np.ndarray]:
        self.request.infer({0: batch})
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self._all_names))]


def _is_path(model) -> bool:
    return isinstance(model, (str, os.PathLike))
