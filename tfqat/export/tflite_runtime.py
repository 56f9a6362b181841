"""TFLite files: inspect, validate, name and run them, with numpy and LiteRT only.

Nothing here imports TensorFlow (a device has none). `tfqat.export.tflite` re-exports this
module together with the conversion functions of `tfqat.export.tflite_convert`.

Files made by `convert_int8` have:
  * one input "image": int8 [1, H, W, 3], scale 1.0, zero point -128 (int8 = pixel - 128);
  * the model's outputs in the Keras model's order (box_p3, cls_p3, box_p4, ... for YOLO),
    their tensors named after the heads, plus a "serving_default" signature with those names.
`output_names` still works on files from other converters (alphabetical signature order,
TF-MOT's "quant_" prefix).
"""

import collections
import os

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from tfqat.export.tflite_runner import TFLiteRunner, interpreter_output_names, normalise_name
from tfqat.fileio import atomic_write

__all__ = [
    "INPUT_QUANTIZATION",
    "ExportValidationError",
    "TFLiteRunner",
    "inspect_model",
    "kernel_sparsity",
    "output_names",
    "set_io_names",
    "validate_int8",
    "weight_sparsity",
    "weight_tensors",
    "write_atomically",
]

# (scale, zero point) of the int8 input of every tfqat model: int8 = pixel - 128.
INPUT_QUANTIZATION = (1.0, -128)

_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "COMPLEX64", "COMPLEX128"}
# Weight input index of the ops whose weights count in `weight_sparsity`.
_WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


class ExportValidationError(ValueError):
    """An exported file is not what it claims to be (not fully int8, unusable outputs, ...)."""


def write_atomically(path: str, data: bytes):
    """Writes a model file through a temporary file and a rename."""
    atomic_write(path, bytes(data))


# === Flatbuffer access ===


def _read_bytes(model) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    with open(os.fspath(model), "rb") as f:
        return f.read()


def _model_object(data: bytes):
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))


def _op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{_text(code.customCode)}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_constant(model, tensor) -> bool:
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


class _AlignedBuilder(flatbuffers.Builder):
    """Writes byte vectors (weight buffers) 16-byte aligned, as the TFLite converter does."""

    def CreateNumpyVector(self, x):  # noqa: N802  (flatbuffers' name)
        if x.dtype != np.uint8:
            return super().CreateNumpyVector(x)
        self.StartVector(1, x.size, 16)
        payload = x.tobytes()
        self.head = self.head - len(payload)
        self.Bytes[self.head : self.head + len(payload)] = payload
        self.vectorNumElems = x.size
        return self.EndVector()


def _pack(model) -> bytes:
    builder = _AlignedBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def set_io_names(tflite_model, inputs, outputs) -> bytes:
    """Renames the input and output tensors and writes a "serving_default" signature.

    `inputs` / `outputs` are names in the file's input / output order.
    """
    model = _model_object(_read_bytes(tflite_model))
    subgraph = model.subgraphs[0]
    if len(inputs) != len(subgraph.inputs) or len(outputs) != len(subgraph.outputs):
        raise ValueError(
            f"file has {len(subgraph.inputs)} inputs and {len(subgraph.outputs)} outputs; got "
            f"names {list(inputs)} and {list(outputs)}"
        )
    signature = schema.SignatureDefT(signatureKey="serving_default", subgraphIndex=0)
    signature.inputs, signature.outputs = [], []
    for indices, names, entries in (
        (subgraph.inputs, inputs, signature.inputs),
        (subgraph.outputs, outputs, signature.outputs),
    ):
        for index, name in zip(indices, names):
            subgraph.tensors[index].name = name
            entries.append(schema.TensorMapT(name=name, tensorIndex=int(index)))
    model.signatureDefs = [signature]
    return _pack(model)


# === Inspection ===


def inspect_model(tflite_model) -> dict:
    """Static facts about a .tflite file: ops, op versions, tensor types, I/O quantization."""
    data = _read_bytes(tflite_model)
    model = _model_object(data)
    ops = collections.Counter()
    versions = {}
    types = collections.Counter()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            types[_TYPE_NAMES.get(tensor.type, str(tensor.type))] += 1
        for op in subgraph.operators:
            name = _op_name(model, op)
            ops[name] += 1
            version = model.operatorCodes[op.opcodeIndex].version
            versions[name] = max(versions.get(name, 0), version)
    subgraph = model.subgraphs[0]
    return {
        "size_bytes": len(data),
        "op_counts": dict(sorted(ops.items())),
        "op_versions": dict(sorted(versions.items())),
        "tensor_types": dict(sorted(types.items())),
        "inputs": [_tensor_summary(subgraph.tensors[i]) for i in subgraph.inputs],
        "outputs": [_tensor_summary(subgraph.tensors[i]) for i in subgraph.outputs],
    }


def _tensor_summary(tensor) -> dict:
    q = tensor.quantization
    scales = [] if q is None or q.scale is None else [float(s) for s in q.scale]
    zeros = [] if q is None or q.zeroPoint is None else [int(z) for z in q.zeroPoint]
    return {
        "name": _text(tensor.name),
        "shape": [int(d) for d in tensor.shape] if tensor.shape is not None else [],
        "dtype": _TYPE_NAMES.get(tensor.type, str(tensor.type)).lower(),
        "scale": scales[0] if len(scales) == 1 else scales,
        "zero_point": zeros[0] if len(zeros) == 1 else zeros,
    }


def weight_tensors(tflite_model) -> dict[str, np.ndarray]:
    """{weight tensor name: its constant values, flat} of the conv / depthwise / transposed conv
    / fully-connected ops (int8, float32 or float16 weights)."""
    model = _model_object(_read_bytes(tflite_model))
    weights = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            index = _WEIGHT_INPUT.get(_op_name(model, op))
            if index is None or index >= len(op.inputs) or op.inputs[index] < 0:
                continue
            tensor = subgraph.tensors[op.inputs[index]]
            if not _is_constant(model, tensor):
                continue
            dtype = {"INT8": np.int8, "FLOAT32": np.float32, "FLOAT16": np.float16}.get(
                _TYPE_NAMES.get(tensor.type)
            )
            if dtype is not None:
                weights[_text(tensor.name)] = np.frombuffer(
                    model.buffers[tensor.buffer].data.tobytes(), dtype=dtype
                )
    return weights


def weight_sparsity(tflite_model) -> dict:
    """Exact zeros in the weights of conv / depthwise / transposed conv / fully-connected ops.

    Returns {"layers": {weight tensor name: fraction of zeros}, "sizes": {name: weights},
    "total": fraction over all}.
    Quantized weights are symmetric (zero point 0), so a pruned float zero stays an int8 zero.
    """
    weights = weight_tensors(tflite_model)
    zeros = sum(int(np.count_nonzero(values == 0)) for values in weights.values())
    total = sum(values.size for values in weights.values())
    return {
        "layers": {name: float(np.mean(values == 0)) for name, values in weights.items()},
        "sizes": {name: int(values.size) for name, values in weights.items()},
        "total": zeros / total if total else 0.0,
    }


def kernel_sparsity(tflite_model) -> float:
    """Fraction of exact zeros over all conv / fully-connected weights of the file."""
    return weight_sparsity(tflite_model)["total"]


def output_names(model) -> list[str]:
    """The name of each output, in the order of `Interpreter.get_output_details()`.

    Args:
      model: an Interpreter, the file's bytes, or its path.

    Names come from the file's signature when it has one (TF-MOT's "quant_" prefix removed),
    from the output tensors' names otherwise. Files from `convert_int8` list the Keras model's
    outputs in its own order; other converters may sort them alphabetically.
    """
    if isinstance(model, Interpreter):
        return interpreter_output_names(model)
    # The interpreter lists the outputs in the order of the (first) subgraph's outputs.
    flat = _model_object(_read_bytes(model))
    subgraph = flat.subgraphs[0]
    by_index = {}
    for signature in flat.signatureDefs or []:
        if signature.subgraphIndex == 0:
            by_index = {m.tensorIndex: _text(m.name) for m in signature.outputs or []}
            break
    return [
        normalise_name(by_index.get(i, _text(subgraph.tensors[i].name))) for i in subgraph.outputs
    ]


# === Validation ===


def _static_problems(model) -> list[str]:
    """Float tensors, ops without an int8 kernel, non-int8 model inputs/outputs."""
    problems = []
    subgraph = model.subgraphs[0]
    for label, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
        for index in indices:
            tensor = subgraph.tensors[index]
            type_name = _TYPE_NAMES.get(tensor.type)
            if type_name != "INT8":
                producers = [
                    f"{_op_name(model, op)} (op #{i})"
                    for i, op in enumerate(subgraph.operators)
                    if index in op.outputs
                ]
                problems.append(
                    f"model {label} {_text(tensor.name)!r} is {type_name}, not INT8"
                    + (f" (made by {', '.join(producers)})" if producers else "")
                )
    for s, graph in enumerate(model.subgraphs):
        users = collections.defaultdict(list)
        for i, op in enumerate(graph.operators):
            for index in [*op.inputs, *op.outputs]:
                if index >= 0:
                    users[index].append(f"{_op_name(model, op)} (op #{i})")
        floats = [
            (index, tensor)
            for index, tensor in enumerate(graph.tensors)
            if _TYPE_NAMES.get(tensor.type) in _FLOAT_TYPES
        ]
        for index, tensor in floats:
            problems.append(
                f"float tensor {_text(tensor.name)!r} ({_TYPE_NAMES[tensor.type]}"
                f"{', constant' if _is_constant(model, tensor) else ''}) used by "
                f"{', '.join(users[index]) or 'no op'}" + (f" in subgraph {s}" if s else "")
            )
        for i, op in enumerate(graph.operators):
            name = _op_name(model, op)
            activations = [
                graph.tensors[t]
                for t in [*op.inputs, *op.outputs]
                if t >= 0 and not _is_constant(model, graph.tensors[t])
            ]
            kinds = sorted({_TYPE_NAMES.get(t.type, str(t.type)) for t in activations})
            if name.startswith(("CUSTOM", "FLEX")) or name == "DEQUANTIZE" or kinds != ["INT8"]:
                listed = ", ".join(
                    f"{_text(t.name)!r} {_TYPE_NAMES.get(t.type)}" for t in activations
                )
                problems.append(
                    f"op #{i} {name} does not run an int8 kernel (its tensors: {listed})"
                )
    return problems


def validate_int8(
    tflite_model,
    calibration_images,
    score_output_names=("cls_p3", "cls_p4", "cls_p5"),
    *,
    min_levels: int = 32,
    input_quantization=INPUT_QUANTIZATION,
    num_threads: int = 2,
) -> dict:
    """Checks that a file is really fully int8 and that its outputs carry information.

    Raises ExportValidationError, naming each offending tensor / op, when: the model input or an
    output is not int8; any tensor is float; any op does not run on int8 activations
    (DEQUANTIZE, custom/Flex ops, int32/float activations); the input quantization is not
    `input_quantization` (None: not checked); LiteRT with its default XNNPACK delegate cannot
    load or run the file (a diverged model converts but XNNPACK refuses it); an output uses
    fewer than `min_levels` distinct int8 values over `calibration_images`; or a score output
    (`score_output_names`, None for none) is one single value.

    Args:
      tflite_model: bytes or path.
      calibration_images: float32 [N, H, W, 3] pixels 0..255 (real images, a dozen or more).

    Returns:
      {"size_bytes", "op_counts", "op_versions", "tensor_types", "input": {name, shape, dtype,
      scale, zero_point}, "outputs": [{name, shape, dtype, scale, zero_point, distinct_levels,
      min, max}], "delegate_nodes", "num_images"}.
    """
    data = _read_bytes(tflite_model)
    model = _model_object(data)
    report = inspect_model(data)
    problems = _static_problems(model)
    (input_summary,) = report.pop("inputs")
    report["input"] = input_summary
    if input_quantization is not None and input_summary["dtype"] == "int8":
        got = (input_summary["scale"], input_summary["zero_point"])
        if got != tuple(input_quantization):
            problems.append(
                f"input {input_summary['name']!r} quantization (scale, zero point) is {got}, "
                f"expected {tuple(input_quantization)} (int8 = pixel - 128)"
            )
    if problems:
        raise ExportValidationError("not a fully-int8 file:\n  " + "\n  ".join(problems))

    try:
        runner = TFLiteRunner(data, num_threads=num_threads)
        raw = runner.raw(calibration_images)
    except (RuntimeError, ValueError) as e:
        raise ExportValidationError(
            f"LiteRT with its default XNNPACK delegate cannot load or run the file: {e}"
        ) from e
    nodes = runner.interpreter._get_ops_details()  # noqa: SLF001  (no public equivalent)
    report["delegate_nodes"] = sum(1 for op in nodes if op["op_name"] == "DELEGATE")
    report["num_images"] = int(len(raw[0]))

    summaries = {s["name"]: s for s in report.pop("outputs")}
    report["outputs"] = []
    for name, values, detail in zip(runner.output_names, raw, runner.output_details):
        summary = dict(summaries.get(detail["name"], {"name": name}))
        summary["name"] = name
        summary.update(
            distinct_levels=int(np.unique(values).size),
            min=int(values.min()),
            max=int(values.max()),
        )
        report["outputs"].append(summary)
        if summary["distinct_levels"] < min_levels:
            problems.append(
                f"output {name!r} uses {summary['distinct_levels']} distinct int8 levels "
                f"(< {min_levels}) over {report['num_images']} images: it barely varies, or "
                "its quantization range is far wider than its values"
            )
        if score_output_names and name in score_output_names and summary["distinct_levels"] == 1:
            problems.append(
                f"score output {name!r} is the single value {summary['min']} on every image"
            )
    missing = [n for n in score_output_names or () if n not in runner.output_names]
    if missing:
        problems.append(
            f"score outputs {missing} not among the file's outputs {runner.output_names}"
        )
    if problems:
        raise ExportValidationError("unusable int8 outputs:\n  " + "\n  ".join(problems))
    return report
