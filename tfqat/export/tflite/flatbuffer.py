"""TFLite flatbuffers: read, inspect, rename and re-pack them, with numpy and LiteRT's schema.

Nothing here imports TensorFlow. Conversion is `tfqat.export.tflite.convert`, validation
`tfqat.export.tflite.validate`, running `tfqat.runtime.tflite`.

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

from tfqat.runtime.tflite import interpreter_output_names, strip_quant_prefix

TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "COMPLEX64", "COMPLEX128"}
# Weight input index of the ops whose weights count in `tflite_sparsity_by_layer`.
_WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


# === Flatbuffer access ===


def read_bytes(model) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    with open(os.fspath(model), "rb") as f:
        return f.read()


def model_object(data: bytes):
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))


def op_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{text(code.customCode)}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def text(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_constant(model, tensor) -> bool:
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


def pack(model) -> bytes:
    builder = _AlignedBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def set_io_names(tflite_model, inputs, outputs) -> bytes:
    """Renames the input and output tensors and writes a "serving_default" signature.

    `inputs` / `outputs` are names in the file's input / output order.
    """
    model = model_object(read_bytes(tflite_model))
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
    return pack(model)


# === Inspection ===


def inspect_model(tflite_model) -> dict:
    """Static facts about a .tflite file: ops, op versions, tensor types, I/O quantization."""
    data = read_bytes(tflite_model)
    model = model_object(data)
    ops = collections.Counter()
    versions = {}
    types = collections.Counter()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            types[TYPE_NAMES.get(tensor.type, str(tensor.type))] += 1
        for op in subgraph.operators:
            name = op_name(model, op)
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
        "name": text(tensor.name),
        "shape": [int(d) for d in tensor.shape] if tensor.shape is not None else [],
        "dtype": TYPE_NAMES.get(tensor.type, str(tensor.type)).lower(),
        "scale": scales[0] if len(scales) == 1 else scales,
        "zero_point": zeros[0] if len(zeros) == 1 else zeros,
    }


def weight_tensors(tflite_model) -> dict[str, np.ndarray]:
    """{weight tensor name: its constant values, flat} of the conv / depthwise / transposed conv
    / fully-connected ops (int8, float32 or float16 weights)."""
    model = model_object(read_bytes(tflite_model))
    weights = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            index = _WEIGHT_INPUT.get(op_name(model, op))
            if index is None or index >= len(op.inputs) or op.inputs[index] < 0:
                continue
            tensor = subgraph.tensors[op.inputs[index]]
            if not is_constant(model, tensor):
                continue
            dtype = {"INT8": np.int8, "FLOAT32": np.float32, "FLOAT16": np.float16}.get(
                TYPE_NAMES.get(tensor.type)
            )
            if dtype is not None:
                weights[text(tensor.name)] = np.frombuffer(
                    model.buffers[tensor.buffer].data.tobytes(), dtype=dtype
                )
    return weights


def tflite_sparsity_by_layer(tflite_model) -> dict:
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


def tflite_kernel_sparsity(tflite_model) -> float:
    """Fraction of exact zeros over all conv / fully-connected weights of the file."""
    return tflite_sparsity_by_layer(tflite_model)["total"]


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
    flat = model_object(read_bytes(model))
    subgraph = flat.subgraphs[0]
    by_index = {}
    for signature in flat.signatureDefs or []:
        if signature.subgraphIndex == 0:
            by_index = {m.tensorIndex: text(m.name) for m in signature.outputs or []}
            break
    return [
        strip_quant_prefix(by_index.get(i, text(subgraph.tensors[i].name)))
        for i in subgraph.outputs
    ]
