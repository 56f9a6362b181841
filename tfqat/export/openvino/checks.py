"""Export checks of the Intel files: int8 weights in the ONNX file, i8/u8 convolutions in
OpenVINO's compiled model, an int8 IR much smaller than the float one.

Each check raises ExportValidationError naming what is not int8.
"""

import collections
import os

from tfqat.export.errors import ExportValidationError
from tfqat.export.openvino.onnx_graph import Graph, reads_int8_weights


def check_onnx_int8(model) -> dict:
    """Raises ExportValidationError unless every Conv reads int8 weights through a DQ node.

    Also rejects any Concat still reading integer tensors (OpenVINO cannot compile it).
    `model` is an onnx ModelProto or a path. Returns {"convs", "int8_weight_convs"}.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    graph = Graph(model.graph)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    problems = [
        f"{node.op_type} {node.name!r}: weights {node.input[1]!r} are not int8 (no "
        "DequantizeLinear of an int8 initializer)"
        for node in convs
        if not reads_int8_weights(graph, node.input[1])
    ]
    problems += [
        f"Concat {node.name!r} reads integer tensors: OpenVINO's CPU plugin cannot compile it"
        for node in model.graph.node
        if node.op_type == "Concat" and any(graph.is_integer(i) for i in node.input)
    ]
    if not convs:
        problems.append("the graph has no convolution")
    if problems:
        raise ExportValidationError(
            "ONNX file is not int8 where it must be:\n  " + "\n  ".join(problems)
        )
    return {"convs": len(convs), "int8_weight_convs": len(convs)}


def convolution_precisions(compiled) -> dict:
    """{runtime precision: [names]} of the Convolution nodes OpenVINO really runs."""
    by_precision = collections.defaultdict(list)
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            by_precision[info["runtimePrecision"].astype(str)].append(op.get_friendly_name())
    return dict(by_precision)


def check_openvino_int8(compiled, min_fraction: float = 0.95) -> dict:
    """Raises ExportValidationError unless >= min_fraction of the convolutions run in i8/u8.

    `compiled` is an `openvino.CompiledModel` (e.g. `OpenVINORunner(...).compiled`).
    Returns {precision: count}.
    """
    by_precision = convolution_precisions(compiled)
    counts = {p: len(names) for p, names in by_precision.items()}
    total = sum(counts.values())
    integer = counts.get("i8", 0) + counts.get("u8", 0)
    if total == 0 or integer < min_fraction * total:
        floats = [
            f"{name} ({p})"
            for p, names in by_precision.items()
            if p not in ("i8", "u8")
            for name in names
        ]
        raise ExportValidationError(
            f"OpenVINO runs {integer} of {total} convolutions in i8/u8 (< {min_fraction:.0%}); "
            "not integer:\n  " + "\n  ".join(floats or ["(no convolution at all)"])
        )
    return counts


def check_ir_size(int8_xml, float_xml, max_ratio: float = 0.3) -> float:
    """Raises ExportValidationError unless the int8 IR's .bin is <= max_ratio x the float's."""
    sizes = [
        os.path.getsize(os.path.splitext(os.fspath(p))[0] + ".bin") for p in (int8_xml, float_xml)
    ]
    ratio = sizes[0] / sizes[1]
    if ratio > max_ratio:
        raise ExportValidationError(
            f"{int8_xml}: weights {sizes[0]} bytes are {ratio:.2f}x the float IR's {sizes[1]} "
            f"(> {max_ratio}): its weights are not stored in int8"
        )
    return ratio
