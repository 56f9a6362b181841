"""Runs a .tflite file with numpy and an interpreter only: LiteRT, else tflite-runtime.

No TensorFlow and no flatbuffer schema: this is what `tfqat.runtime` uses on a device with
nothing but tflite-runtime, and what export validation and evaluation use on a workstation.
"""

import os

import numpy as np

from tfqat.runtime.backends import loading
from tfqat.runtime.pixels import pixel_quantization, quantize_pixels

# TF-MOT names each quantized layer "quant_<layer>"; our file names are the Keras layers'.
TFMOT_PREFIX = "quant_"


def interpreter_module():
    """LiteRT's interpreter module, else tflite-runtime's (what older device images install)."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError as e:
            raise ImportError(
                "running a .tflite needs ai-edge-litert (pip install ai-edge-litert) or "
                "tflite-runtime"
            ) from e
    return interpreter


def strip_quant_prefix(name: str) -> str:
    """'quant_box_p3:0' -> 'box_p3' (TF-MOT's prefix and the tensor suffix removed)."""
    name = name.split(":")[0]
    return name.removeprefix(TFMOT_PREFIX)


def interpreter_output_names(interpreter) -> list[str]:
    """The name of each output of an interpreter, in `get_output_details()` order: the
    signature's names where the file has one, the tensors' names otherwise."""
    by_index = {}
    signatures = interpreter.get_signature_list()
    if signatures:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        by_index = {d["index"]: name for name, d in runner.get_output_details().items()}
    details = interpreter.get_output_details()
    return [strip_quant_prefix(by_index.get(d["index"], d["name"])) for d in details]


def _quantize(values, detail):
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(detail["dtype"], np.integer) or scale == 0:
        return values.astype(detail["dtype"])
    if values.dtype == np.uint8 and (scale, zero_point) == pixel_quantization(detail["dtype"]):
        return quantize_pixels(values, detail["dtype"])
    info = np.iinfo(detail["dtype"])
    quantized = np.clip(np.round(values / scale) + zero_point, info.min, info.max)
    return quantized.astype(detail["dtype"])


def _dequantize(values, detail):
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(values.dtype, np.integer) or scale == 0:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)


class TFLiteRunner:
    """Runs a .tflite file on float32 pixel batches: a `predict_fn` for `task.predict`.

    `runner(images)` takes float32 [B, H, W, 3] pixels 0..255, quantizes them with the file's
    own input scale and zero point (for an int8 file), runs image by image (or the whole batch
    if the file's batch dimension is dynamic), and returns the dequantized float32 outputs
    [B, ...] in `output_order` (names, e.g. yolo_spec.OUTPUT_NAMES) or, by default, in the
    file's order (for files from `convert_int8`: the Keras model's order).
    `runner.raw(images)` returns the outputs as stored in the file (int8 for an int8 file).
    `runner.runtime_name` is "ai_edge_litert" or "tflite_runtime".

    `model` is a path or the file's bytes. By default the runtime's own delegate runs what it
    takes (LiteRT: XNNPACK, int8 included). `reference_kernels` selects TFLite's reference
    kernels and no delegate: slow, but the same integer arithmetic in every runtime version, to
    tell a file's meaning from kernel rounding.
    """

    def __init__(
        self, model, num_threads: int = 2, output_order=None, reference_kernels: bool = False
    ):
        module = interpreter_module()
        self.runtime_name = module.__name__.split(".")[0]
        options = {"num_threads": num_threads}
        if reference_kernels:
            options["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_REF
        if isinstance(model, (str, os.PathLike)):
            source, given = os.fspath(model), {"model_path": os.fspath(model)}
        else:
            source, given = "the .tflite", {"model_content": bytes(model)}
        with loading(source, self.runtime_name):
            self.interpreter = module.Interpreter(**given, **options)
            self.interpreter.allocate_tensors()
        (self.input_detail,) = self.interpreter.get_input_details()
        details = self.interpreter.get_output_details()
        names = interpreter_output_names(self.interpreter)
        if output_order is not None:
            missing = [n for n in output_order if n not in names]
            if missing or len(output_order) != len(names):
                raise ValueError(
                    f"{source}: file outputs {names} do not match output_order {list(output_order)}"
                )
            details = [details[names.index(n)] for n in output_order]
            names = list(output_order)
        self.output_details = details
        self.output_names = names
        self._dynamic_batch = self.input_detail["shape_signature"][0] == -1
        self._batch = int(self.input_detail["shape"][0])

    @property
    def input_quantization(self) -> tuple[float, int]:
        return tuple(self.input_detail["quantization"])

    def raw(self, images) -> list[np.ndarray]:
        """Outputs as stored in the file, for float pixels or uint8 ones (quantized faster)."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            images = images.astype(np.float32, copy=False)
        if images.ndim == 3:
            images = images[None]
        chunk = len(images) if self._dynamic_batch else self._batch
        if self._dynamic_batch and self._batch != chunk:
            self.interpreter.resize_tensor_input(
                self.input_detail["index"], [chunk, *images.shape[1:]]
            )
            self.interpreter.allocate_tensors()
            self._batch = chunk
            self.output_details = [self._detail_by_index(d["index"]) for d in self.output_details]
        outputs = [[] for _ in self.output_details]
        for start in range(0, len(images), chunk):
            batch = images[start : start + chunk]
            self.interpreter.set_tensor(
                self.input_detail["index"], _quantize(batch, self.input_detail)
            )
            self.interpreter.invoke()
            for collected, detail in zip(outputs, self.output_details):
                collected.append(self.interpreter.get_tensor(detail["index"]))
        return [np.concatenate(o) for o in outputs]

    def __call__(self, images) -> list[np.ndarray]:
        return [_dequantize(v, d) for v, d in zip(self.raw(images), self.output_details)]

    def _detail_by_index(self, index):
        return next(d for d in self.interpreter.get_output_details() if d["index"] == index)
