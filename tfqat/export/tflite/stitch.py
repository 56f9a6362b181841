"""Joins .tflite graphs at the flatbuffer level, with numpy and LiteRT's schema only.

`stitch` runs a second model (the "tail") on the outputs of a first (the "body") inside one
file: every body output feeds the tail input of the same name through a DEQUANTIZE op (int8 ->
float32), so the body's operators, weights and quantization stay byte for byte what they were.
`with_uint8_input` puts a QUANTIZE op (uint8 -> int8, the same op the TFLite converter writes
for `inference_input_type=tf.uint8`) in front of an int8 model whose input is int8 = pixel - 128:
uint8 pixel p becomes p - 128 exactly, so the int8 graph sees the very values it saw before.
"""

import copy

import numpy as np

from tfqat.export.tflite.flatbuffer import model_object, pack, read_bytes, schema
from tfqat.runtime.tflite import strip_quant_prefix

__all__ = ["set_outputs", "stitch", "with_uint8_input"]

# The op versions the TFLite converter writes for these conversions (checked with TF 2.21).
_DEQUANTIZE_INT8_VERSION = 2
_QUANTIZE_UINT8_TO_INT8_VERSION = 1
_SIGNATURE_PREFIX = "serving_default_"


def _name(tensor) -> str:
    text = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return strip_quant_prefix(
        text[len(_SIGNATURE_PREFIX) :] if text.startswith(_SIGNATURE_PREFIX) else text
    )


def _opcode_index(model, builtin: int, version: int, custom_code=None) -> int:
    """Index of an operator code in `model`, appended when the model has none like it."""
    for i, code in enumerate(model.operatorCodes):
        same_op = max(code.builtinCode, code.deprecatedBuiltinCode) == builtin
        if same_op and code.version == version and code.customCode == custom_code:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    placeholder = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
    code.deprecatedBuiltinCode = min(builtin, placeholder)
    code.version = version
    code.customCode = custom_code
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _operator(opcode_index: int, inputs, outputs):
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index
    op.inputs = np.asarray(inputs, np.int32)
    op.outputs = np.asarray(outputs, np.int32)
    return op


def _tensor_like(tensor, name: str, tensor_type: int, scale=None, zero_point=None):
    """A new activation tensor of `tensor`'s shape (no buffer data), optionally quantized."""
    new = schema.TensorT()
    new.shape = np.asarray(tensor.shape, np.int32)
    if tensor.shapeSignature is not None:
        new.shapeSignature = np.asarray(tensor.shapeSignature, np.int32)
    new.type = tensor_type
    new.name = name
    new.buffer = 0
    if scale is not None:
        new.quantization = schema.QuantizationParametersT()
        new.quantization.scale = np.asarray([scale], np.float32)
        new.quantization.zeroPoint = np.asarray([zero_point], np.int64)
    return new


def _append_buffers(model, buffers) -> int:
    """Appends copies of `buffers` to `model`; returns the index of the first one."""
    offset = len(model.buffers)
    model.buffers.extend(copy.deepcopy(b) for b in buffers)
    return offset


def _append_tail_operators(model, tail, remap: np.ndarray):
    """Copies the tail's operators into model's first subgraph; remap[i] is tail tensor i's
    index in model."""
    subgraph = model.subgraphs[0]
    for op in tail.subgraphs[0].operators:
        code = tail.operatorCodes[op.opcodeIndex]
        new = copy.deepcopy(op)
        new.opcodeIndex = _opcode_index(
            model, max(code.builtinCode, code.deprecatedBuiltinCode), code.version, code.customCode
        )
        new.inputs = np.asarray([remap[i] if i >= 0 else i for i in op.inputs], np.int32)
        new.outputs = remap[np.asarray(op.outputs)].astype(np.int32)
        if op.intermediates is not None:
            new.intermediates = remap[np.asarray(op.intermediates)].astype(np.int32)
        subgraph.operators.append(new)


def _merged_metadata(body, tail) -> list:
    """The body's metadata entries, with min_runtime_version the larger of the two files'."""
    versions = []
    for model in (body, tail):
        for entry in model.metadata or []:
            if entry.name in (b"min_runtime_version", "min_runtime_version"):
                text = bytes(model.buffers[entry.buffer].data).rstrip(b"\0").decode()
                versions.append(tuple(int(p) for p in text.split(".") if p.isdigit()))
    entries = [
        e
        for e in body.metadata or []
        if e.name not in (b"min_runtime_version", "min_runtime_version")
    ]
    if versions:
        text = ".".join(str(p) for p in max(versions))
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode().ljust(16, b"\0"), np.uint8)
        body.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = "min_runtime_version"
        entry.buffer = len(body.buffers) - 1
        entries.append(entry)
    return entries


def stitch(body_model, tail_model) -> bytes:
    """One file: `body_model`'s graph, then `tail_model`'s on its outputs.

    Each tail input must have the name of a body output (tensor or signature name, TF-MOT's
    "quant_" and the "serving_default_" prefix ignored); a body output of the tail input's type
    feeds it directly, an int8 one through a DEQUANTIZE op (to float32). The result's inputs
    are the body's, its outputs the tail's, in the tail's order; the signature is dropped
    (`set_outputs` writes one).
    """
    from tfqat.export.tflite.flatbuffer import output_names

    body_bytes = read_bytes(body_model)
    body, tail = model_object(body_bytes), model_object(read_bytes(tail_model))
    graph, tail_graph = body.subgraphs[0], tail.subgraphs[0]
    body_outputs = dict(zip(output_names(body_bytes), graph.outputs))
    buffer_offset = _append_buffers(body, tail.buffers)
    remap = np.arange(len(tail_graph.tensors)) + len(graph.tensors)
    for tensor in tail_graph.tensors:
        new = copy.deepcopy(tensor)
        new.buffer = tensor.buffer + buffer_offset if tensor.buffer > 0 else 0
        graph.tensors.append(new)
    dequantize = _opcode_index(body, schema.BuiltinOperator.DEQUANTIZE, _DEQUANTIZE_INT8_VERSION)
    for tail_input in tail_graph.inputs:
        name = _name(tail_graph.tensors[tail_input])
        if name not in body_outputs:
            raise ValueError(f"tail input {name!r} is not a body output {sorted(body_outputs)}")
        source = body_outputs[name]
        source_type, target_type = graph.tensors[source].type, tail_graph.tensors[tail_input].type
        if source_type == target_type:
            remap[tail_input] = source
        elif (source_type, target_type) == (schema.TensorType.INT8, schema.TensorType.FLOAT32):
            graph.operators.append(_operator(dequantize, [source], [remap[tail_input]]))
            graph.tensors[remap[tail_input]].name = f"{name}_float"
        else:
            raise ValueError(
                f"body output {name!r} is of type {source_type}, the tail input "
                f"of type {target_type}: only int8 -> float32 is converted"
            )
    _append_tail_operators(body, tail, remap)
    graph.outputs = remap[np.asarray(tail_graph.outputs)].astype(np.int32)
    body.metadata = _merged_metadata(body, tail)
    body.signatureDefs = []
    return pack(body)


def with_uint8_input(tflite_model, name: str = "image") -> bytes:
    """The int8 model with a uint8 input (scale 1, zero point 0) and a QUANTIZE op to its
    int8 input, which must be scale 1, zero point -128 (int8 = pixel - 128): an exact shift."""
    model = model_object(read_bytes(tflite_model))
    graph = model.subgraphs[0]
    (int8_input,) = graph.inputs
    tensor = graph.tensors[int8_input]
    quantization = tensor.quantization
    got = (
        None
        if quantization is None or quantization.scale is None
        else (float(quantization.scale[0]), int(quantization.zeroPoint[0]))
    )
    if tensor.type != schema.TensorType.INT8 or got != (1.0, -128):
        raise ValueError(
            f"the model input must be int8 with scale 1.0, zero point -128 "
            f"(int8 = pixel - 128); got type {tensor.type}, (scale, zero point) "
            f"{got}"
        )
    tensor.name = f"{name}_int8"
    graph.tensors.append(_tensor_like(tensor, name, schema.TensorType.UINT8, 1.0, 0))
    uint8_input = len(graph.tensors) - 1
    quantize = _opcode_index(
        model, schema.BuiltinOperator.QUANTIZE, _QUANTIZE_UINT8_TO_INT8_VERSION
    )
    graph.operators.insert(0, _operator(quantize, [uint8_input], [int8_input]))
    graph.inputs = np.asarray([uint8_input], np.int32)
    model.signatureDefs = []
    return pack(model)


def set_outputs(tflite_model, tensor_indices, names, shapes=None) -> bytes:
    """Makes `tensor_indices` (None: the present outputs) the model's outputs, named `names`
    (static `shapes` if given), and writes a "serving_default" signature of the inputs (names
    kept) and these outputs."""
    from tfqat.export.tflite.flatbuffer import set_io_names

    model = model_object(read_bytes(tflite_model))
    graph = model.subgraphs[0]
    if tensor_indices is not None:
        graph.outputs = np.asarray(tensor_indices, np.int32)
    tensor_indices = [int(i) for i in graph.outputs]
    for index, shape in zip(tensor_indices, shapes or []):
        graph.tensors[index].shape = np.asarray(shape, np.int32)
        graph.tensors[index].shapeSignature = None
    input_names = [_name(graph.tensors[i]) for i in graph.inputs]
    return set_io_names(pack(model), input_names, list(names))
